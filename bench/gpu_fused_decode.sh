#!/usr/bin/env bash
# Issue 19's fused decode layers on the GPU machine, in one call (about two minutes on an H200):
# the per-phase profile of a decode step (unfused and fused kernels, batch 1, 4 and 64, 1k
# context), the fused products' variants one by one (kernel_bench fused, columns per warp
# 1/2/4 at one row, 2 at four rows), the whole step for three more variant sets, and
# single-stream `hkv generate` with the fused kernels off and on. Usage: bench/gpu_fused_decode.sh DIR (an unpacked bundle of
# bench/pack_gpu_bundle.sh holding decode_step_profile, kernel_bench and hkv).
set -euo pipefail
dir="$1"
export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HKV_SOURCE_DIR="${HKV_SOURCE_DIR:-$dir}"
nvidia-smi --query-gpu=name,driver_version --format=csv,noheader || true
"$dir/bin/decode_step_profile" --batch 1,4,64 --context 1024 --steps 30
echo
echo "## kernel_bench fused (Llama-3-8B shapes; weights from HBM)"
for kind in qkv o gate_up down; do
  for cols in 1 2 4; do "$dir/bin/kernel_bench" fused "$kind" 1 "$cols"; done
  "$dir/bin/kernel_bench" fused "$kind" 4 2
done
echo
echo "## whole fused step per HKV_GEMV_COLS (qkv,o,gate_up,down)"
for cols in 1,1,1,1 2,2,2,2 4,2,4,2; do  # 2,1,2,1 (the default) is in the profile above
  "$dir/bin/decode_step_profile" --batch 1,4 --mode fused --steps 30 --gemv_cols "$cols" |
    grep -E '^## |^### |^Step'
done
echo
echo "## hkv generate, one stream, 1,024-token prompt, 256 tokens (HKV_FUSED_DECODE 0, 1)"
cfg="$dir/bench/configs/Meta-Llama-3-8B-Instruct"
ids=$(python3 -c "print(','.join(['128000'] + [str(1000 + (i * 7919) % 120000) for i in range(1023)]))")
for round in 1; do
  for fused in 0 1; do
    out=$(HKV_FUSED_DECODE=$fused "$dir/bin/hkv" generate --model "$cfg" --dummy-weights \
      --device cuda --prompt-ids "$ids" --max-tokens 256 --ignore-eos --seed 1 --json 2>/dev/null)
    python3 - "$fused" "$round" "$out" <<'PY'
import json, sys
j = json.loads(sys.argv[3])
print(f"| fused={sys.argv[1]} | round {sys.argv[2]} | prefill {j['prefill_ms']:.1f} ms | "
      f"decode {j['decode_tokens_per_s']:.1f} tok/s |")
PY
  done
done
