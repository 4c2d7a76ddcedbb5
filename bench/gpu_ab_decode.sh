#!/usr/bin/env bash
# Side-by-side speed check of two builds on the GPU machine (e.g. before and after a refactor):
# single-stream greedy decode after a 1,024-token prompt (Llama-3-8B-Instruct's config, random
# bf16 weights, full KV, 256 tokens), runs alternating A B A B, then bench/engine_host_bench of
# each build. Usage: bench/gpu_ab_decode.sh A_DIR B_DIR (unpacked bundles of
# bench/pack_gpu_bundle.sh holding hkv and engine_host_bench).
set -euo pipefail
a="$1"; b="$2"
cfg="$(cd "$(dirname "$0")" && pwd)/configs/Meta-Llama-3-8B-Instruct"
ids=$(python3 -c "print(','.join(['128000'] + [str(1000 + (i * 7919) % 120000) for i in range(1023)]))")
rows=()
for round in 1 2; do
  for dir in "$a" "$b"; do
    out=$(LD_LIBRARY_PATH="$dir/lib" HKV_SOURCE_DIR="$dir" "$dir/bin/hkv" generate --model "$cfg" \
      --dummy-weights --device cuda --prompt-ids "$ids" --max-tokens 256 --ignore-eos \
      --seed 1 --json 2>/dev/null)
    rows+=("$(python3 - "$dir" "$round" "$out" <<'PY'
import json, sys
j = json.loads(sys.argv[3])
print(f"| {sys.argv[1]} | {sys.argv[2]} | {j['prefill_ms']:.1f} | {j['decode_tokens_per_s']:.1f} |")
PY
)")
  done
done
echo "| build | round | prefill ms | decode tokens/s |"
echo "|---|---|---|---|"
printf '%s\n' "${rows[@]}"
for dir in "$a" "$b"; do
  echo "engine_host_bench: $dir"
  LD_LIBRARY_PATH="$dir/lib" "$dir/bin/engine_host_bench" --config "$cfg"
done
