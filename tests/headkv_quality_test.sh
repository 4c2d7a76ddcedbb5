#!/usr/bin/env bash
# bench/headkv_quality.sh end to end on the needle fixture, kept small for CI: one probe
# estimates the scores, one held-out 1k question runs under full KV and headkv@32 and the
# shuffled control. Checks the files it writes and what they must hold: the table's rows, a
# right full-KV answer, the shuffled scores being a permutation of the estimated ones.
# Usage: tests/headkv_quality_test.sh HKV_BINARY
set -euo pipefail
hkv="$1"
repo="$(cd "$(dirname "$0")/.." && pwd)"
fixture="$repo/tests/data/needle"
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
head -1 "$fixture/probes_score.jsonl" > "$work/probes.jsonl"
grep -m1 '"id": "single-1024-00"' "$fixture/eval.jsonl" > "$work/tasks.jsonl"
DEVICE=cpu POLICIES=full,headkv BUDGETS=32 \
  bash "$repo/bench/headkv_quality.sh" "$hkv" "$fixture" "$work/probes.jsonl" \
  "$work/tasks.jsonl" "$work/out" > "$work/log" 2>&1 || { cat "$work/log"; exit 1; }
cat "$work/out/concentration.txt" "$work/out/eval.md" "$work/out/control.md"
/usr/bin/python3 - "$work/out" <<'PY'
import collections, json, sys
out = sys.argv[1]
score = json.load(open(f"{out}/score.json"))
assert score["probes_run"] == 1 and score["probes_accepted"] == 1, score
est = json.load(open(f"{out}/scores_r2.json"))
shuf = json.load(open(f"{out}/scores_shuffled.json"))
assert len(est) == 48 and sorted(est) == sorted(shuf), "the shuffle keeps every head"
key = lambda d: collections.Counter(json.dumps(v) for v in d.values())
assert key(est) == key(shuf), "the shuffle moves scores between heads, it changes none"
assert any(est[h] != shuf[h] for h in est), "the shuffle moved something"
eval_md = open(f"{out}/eval.md").read()
rows = {l.split("|")[1].strip(): l for l in eval_md.splitlines() if l.startswith("| ")}
assert set(rows) >= {"full", "headkv@32"}, rows.keys()
full = [c.strip() for c in rows["full"].split("|")]
assert full[2] == "100.0%" and full[-3] == "100.0", rows["full"]  # all KV kept; answered right
assert "headkv@32" in open(f"{out}/control.md").read()
assert "heads 48; top 10% (5):" in open(f"{out}/concentration.txt").read()
print("headkv_quality.sh: ok")
PY
