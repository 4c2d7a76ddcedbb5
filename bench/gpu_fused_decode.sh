#!/usr/bin/env bash
# Issue 19's fused decode layers on the GPU machine, in one call (about two minutes on an H200):
# the per-phase profile of a decode step (unfused and fused kernels, batch 1, 4 and 64, 1k
# context), the fused products' variants one by one (kernel_bench fused, columns per warp
# 1/2/4 at one row, 2 at four rows) and the whole step for three more variant sets. The fused
# kernels are off by default (CudaWorkerOptions::fused_decode); decode_step_profile starts one
# worker with them off and one with them on. Usage: bench/gpu_fused_decode.sh DIR (an unpacked
# bundle of bench/pack_gpu_bundle.sh holding decode_step_profile and kernel_bench).
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
echo "## whole fused step per --gemv_cols (qkv,o,gate_up,down)"
for cols in 1,1,1,1 2,2,2,2 4,2,4,2; do  # 2,1,2,1 (the default) is in the profile above
  "$dir/bin/decode_step_profile" --batch 1,4 --mode fused --steps 30 --gemv_cols "$cols" |
    grep -E '^## |^### |^Step'
done
