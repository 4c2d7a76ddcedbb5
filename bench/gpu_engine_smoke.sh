#!/usr/bin/env bash
# GPU engine smoke benchmark (run on the GPU machine): Llama-3-8B-Instruct's config with random
# bf16 weights, single-stream greedy decode after a 1k-token prompt, full KV vs HeadKV-style
# compression, through `hkv generate --device cuda`. Usage: bench/gpu_engine_smoke.sh BIN_DIR
set -euo pipefail
bin="$1"
cfg="$(dirname "$0")/configs/Meta-Llama-3-8B-Instruct"
ids=$(python3 -c "print(','.join(['128000'] + [str(1000 + (i * 7919) % 120000) for i in range(1023)]))")
printf '| policy | prompt | generated | prefill ms | decode tok/s | KV kept / full |\n|---|---|---|---|---|---|\n'
for spec in "full 128" "snapkv 128" "pyramidkv 128"; do
  set -- $spec
  out=$("$bin/hkv" generate --model "$cfg" --dummy-weights --device cuda --prompt-ids "$ids" \
    --max-tokens 128 --ignore-eos --kv-policy "$1" --kv-budget "$2" --json)
  python3 - "$1" "$out" <<'PY'
import json, sys
j = json.loads(sys.argv[2])
print(f"| {sys.argv[1]} | {len(j['prompt_ids'])} | {len(j['output_ids'])} | {j['prefill_ms']:.1f} | "
      f"{j['decode_tokens_per_s']:.1f} | {j['kv_bytes_kept']/2**20:.1f} / {j['kv_bytes_full']/2**20:.1f} MiB |")
PY
done
