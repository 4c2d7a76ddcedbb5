#!/usr/bin/env bash
# HeadKV's quality table for one model, end to end with hkv's own commands:
#   1. `hkv headkv-score` estimates R2 head scores from a probe file (skipped when SCORES is set);
#   2. the scores' concentration (share of the summed score held by the top 10% of heads);
#   3. a control: the same per-head scores shuffled across heads (seeded, so reruns agree);
#   4. `hkv eval` of every policy and budget with the estimated scores, then headkv alone with
#      the shuffled ones.
# Writes OUT/{scores_r2.json,scores_shuffled.json,score.json,concentration.txt,eval.jsonl,eval.md,
# control.jsonl,control.md}: the .md files are the tables.
# Usage: bench/headkv_quality.sh HKV MODEL_DIR PROBES TASKS OUT [extra hkv flags...]
#   env: DEVICE (cpu|cuda|auto, default auto), BUDGETS (default 16,32,64,128),
#        POLICIES (default full,snapkv,pyramidkv,adakv,headkv), SCORES (an existing score file),
#        ANSWER_STOP (default .), SEED (default 17)
# Example (the needle fixture, its 1k prompts):
#   grep -E '"length": 1024' tests/data/needle/eval.jsonl > /tmp/tasks1k.jsonl
#   DEVICE=cpu bench/headkv_quality.sh build/bin/hkv tests/data/needle \
#     tests/data/needle/probes_score.jsonl /tmp/tasks1k.jsonl /tmp/quality
set -euo pipefail
hkv="$1"; model="$2"; probes="$3"; tasks="$4"; out="$5"; shift 5
device="${DEVICE:-auto}"
budgets="${BUDGETS:-16,32,64,128}"
policies="${POLICIES:-full,snapkv,pyramidkv,adakv,headkv}"
stop="${ANSWER_STOP:-.}"
seed="${SEED:-17}"
mkdir -p "$out"

if [ -n "${SCORES:-}" ]; then
  cp "$SCORES" "$out/scores_r2.json"
else
  "$hkv" headkv-score --model "$model" --probes "$probes" --method r2 --device "$device" \
    --out "$out/scores_r2.json" --json "$@" > "$out/score.json"
  python3 - "$out/score.json" <<'EOF'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"headkv-score: {j['probes_accepted']}/{j['probes_run']} probes accepted, "
      f"{j['seconds']:.1f} s on {j['device']}")
EOF
fi

# Concentration and the shuffled control, from the published format {"L-H": [scores...]}.
python3 - "$out/scores_r2.json" "$out/scores_shuffled.json" "$seed" > "$out/concentration.txt" <<'EOF'
import json, random, sys
scores = json.load(open(sys.argv[1]))
heads = list(scores)
mean = {h: (sum(v) / len(v) if v else 0.0) for h, v in scores.items()}
total = sum(mean.values())
ranked = sorted(heads, key=lambda h: -mean[h])
top = ranked[:max(1, round(len(heads) / 10))]
share = sum(mean[h] for h in top) / total if total > 0 else 0.0
print(f"heads {len(heads)}; top 10% ({len(top)}): {', '.join(top)} hold {100 * share:.1f}% "
      f"of the summed mean score")
perm = heads[:]
random.Random(int(sys.argv[3])).shuffle(perm)
json.dump({h: scores[p] for h, p in zip(heads, perm)}, open(sys.argv[2], "w"))
EOF
cat "$out/concentration.txt"

# One markdown table per eval run, from the --json summary line (the last line).
table() {
  python3 - "$1" <<'EOF2'
import json, sys
j = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
rows = j["summary"]
cols = sorted({(g["family"], g["length"]) for r in rows for g in r["groups"]})
print(f"{j['tasks']} tasks on {j['device']}, {j['seconds']:.1f} s")
print("| policy@budget | kv_kept | " + " | ".join(f"{f}/{l}" for f, l in cols) +
      " | em_all | f1_all |")
print("|---" * (len(cols) + 4) + "|")
for r in rows:
    name = r["policy"] if r["policy"] == "full" else f"{r['policy']}@{r['budget']}"
    cell = {(g["family"], g["length"]): g for g in r["groups"]}
    ems = [f"{100 * cell[c]['exact_match']:.1f}" if c in cell else "" for c in cols]
    a = r["all"]
    err = f" ({a['errors']} failed)" if a["errors"] else ""
    print(f"| {name} | {100 * a['kv_kept_share']:.1f}% | " + " | ".join(ems) +
          f" | {100 * a['exact_match']:.1f} | {100 * a['f1']:.1f}{err} |")
EOF2
}

"$hkv" eval --model "$model" --tasks "$tasks" --policies "$policies" --budgets "$budgets" \
  --head-scores "$out/scores_r2.json" --answer-stop "$stop" --device "$device" --json "$@" \
  > "$out/eval.jsonl"
table "$out/eval.jsonl" | tee "$out/eval.md"
"$hkv" eval --model "$model" --tasks "$tasks" --policies headkv --budgets "$budgets" \
  --head-scores "$out/scores_shuffled.json" --answer-stop "$stop" --device "$device" --json "$@" \
  > "$out/control.jsonl"
echo "Control: the scores shuffled across heads (seed $seed)" | tee "$out/control.md"
table "$out/control.jsonl" | tee -a "$out/control.md"
echo "wrote $out"
