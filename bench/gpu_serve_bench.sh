#!/usr/bin/env bash
# GPU serving throughput (run on the GPU machine): `hkv serve --device cuda` with Llama-3-8B's
# config and random bf16 weights, then `hkv bench-serve` at several concurrencies over loopback.
# Usage: bench/gpu_serve_bench.sh BIN_DIR [input_len output_len policy budget concurrency...]
set -euo pipefail
bin="$1"; in_len="${2:-256}"; out_len="${3:-128}"; policy="${4:-full}"; budget="${5:-128}"
shift 5 || true
cfg="$(dirname "$0")/configs/Meta-Llama-3-8B-Instruct"
"$bin/hkv" serve --model "$cfg" --dummy-weights --device cuda --host 127.0.0.1 --port 50091 \
  --metrics-port 0 --max-seqs 256 > /tmp/hkv_gpu_serve.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 600); do grep -q listening /tmp/hkv_gpu_serve.log && break; kill -0 $pid 2>/dev/null || { cat /tmp/hkv_gpu_serve.log; exit 1; }; sleep 0.5; done
grep -E "GPU 0|KV pool" /tmp/hkv_gpu_serve.log || true
for c in "${@:-64 256}"; do
  for conc in $c; do
    "$bin/hkv" bench-serve --target 127.0.0.1:50091 --num-requests $((conc * 2)) \
      --concurrency "$conc" --input-len "$in_len" --output-len "$out_len" --kv-policy "$policy" \
      --kv-budget "$budget" | sed "s/^/[c=$conc $policy] /"
  done
done
