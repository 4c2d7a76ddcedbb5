#!/usr/bin/env bash
# Tensor-parallel benchmark (run on a 2-GPU machine; the table in bench/README.md comes from it).
# Llama-3-8B-Instruct's config, random bf16 weights made on the GPUs. TP=1 vs TP=2:
# single-stream decode at 1k context, and 32k-token prompts with HeadKV B=128 (balanced vs
# contiguous head placement for TP=2).
#   bench/gpu_tp_bench.sh BIN_DIR SCORES_JSON OUT_DIR [NUM_LONG_REQUESTS]
set -euo pipefail
bin="$1"; scores="$2"; out="$3"; nlong="${4:-24}"
here="$(cd "$(dirname "$0")" && pwd)"
cfg="$here/configs/Meta-Llama-3-8B-Instruct"
mkdir -p "$out"
port=50094
ids=$(python3 -c "print(','.join(['128000'] + [str(1000 + (i * 7919) % 120000) for i in range(1023)]))")
{
echo "## Tensor parallel ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l))"
echo
echo "| run | decode tok/s (1 stream, 1k context) |"
echo "|---|---|"
for tp in 1 2; do
  "$bin/hkv" generate --model "$cfg" --dummy-weights --device cuda --prompt-ids "$ids" \
    --max-tokens 256 --ignore-eos --tensor-parallel-size $tp --json \
    >"$out/gen_tp$tp.json" 2>"$out/gen_tp$tp.log"
  python3 -c "import json,sys; j=json.load(open(sys.argv[1])); print(f'| TP={sys.argv[2]} | {j[\"decode_tokens_per_s\"]:.1f} |')" "$out/gen_tp$tp.json" $tp
done
# Same random weights at TP=1 and TP=2: the greedy paths agree until a near-tie breaks the other
# way under the bf16 all-reduce.
python3 - "$out/gen_tp1.json" "$out/gen_tp2.json" <<'PY'
import json, sys
a, b = (json.load(open(p))["output_ids"] for p in sys.argv[1:3])
same = next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))
print(f"\nGreedy tokens, TP=2 vs TP=1: first {same} of {len(a)} equal.")
PY
echo
echo "| run | ok | max streams | output tok/s | TTFT p50 s | TPOT p50 ms | KV blocks per rank | imbalance |"
echo "|---|---|---|---|---|---|---|---|"
for spec in "1 balanced" "2 contiguous" "2 balanced"; do
  set -- $spec
  "$bin/hkv" serve --model "$cfg" --dummy-weights --device cuda --host 127.0.0.1 --port $port \
    --metrics-port 0 --head-scores "$scores" --max-seqs 256 --max-model-len 33024 \
    --tensor-parallel-size $1 --tp-head-placement $2 --default-kv-policy headkv \
    --default-kv-budget 128 > "$out/serve_tp$1_$2.log" 2>&1 &
  pid=$!
  for _ in $(seq 1200); do
    grep -q listening "$out/serve_tp$1_$2.log" && break
    kill -0 $pid 2>/dev/null || { cat "$out/serve_tp$1_$2.log"; exit 1; }
    sleep 0.25
  done
  "$bin/hkv" bench-serve --target 127.0.0.1:$port --json --num-requests "$nlong" \
    --concurrency "$nlong" --input-len 32768 --output-len 256 --kv-policy headkv \
    --kv-budget 128 > "$out/bench_tp$1_$2.json" || true
  kill $pid; wait $pid 2>/dev/null || true
  imb=$(grep -o "KV imbalance [0-9.]* (contiguous [0-9.]*)" "$out/serve_tp$1_$2.log" || echo "-")
  python3 - "$out/bench_tp$1_$2.json" "TP=$1 $2" "$imb" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
print(f"| {sys.argv[2]} | {j['successful_requests']}/{j['num_requests']} | {j['max_concurrent_streams']} | "
      f"{j['output_throughput']:.1f} | {j['ttft_ms']['p50']/1e3:.2f} | {j['tpot_ms']['p50']:.1f} | - | {sys.argv[3]} |")
PY
  grep -E "tensor parallel|KV pool:" "$out/serve_tp$1_$2.log" | sed 's/^/# /'
done
} | tee "$out/tp.md"
