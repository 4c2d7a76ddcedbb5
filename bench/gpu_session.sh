#!/usr/bin/env bash
# The GPU machine's checklist, one phase per call, so that a call of at most 10 minutes does one
# whole job and brings back one file. Every phase logs to OUT/<phase>.log and, on exit (also on
# a timeout's SIGTERM), packs OUT's logs and tables into OUT/<phase>.tar.xz: the device tool
# brings back only a few files per call, so many loose files would be lost.
#
#   bench/gpu_session.sh DIR OUT PHASE [binary...]
#     DIR: an unpacked bundle of bench/pack_gpu_bundle.sh; OUT: where the logs go ($OUT there).
#     tests    the GPU test binaries (the named ones, or every *_test in DIR/bin), each stopped
#              after HKV_TEST_TIMEOUT seconds (default 120); the table of bench/run_gpu_tests.sh.
#     kernels  bench/run_kernel_bench.py: hkv's decode and prefill kernels (mma.sync and wgmma)
#              against torch SDPA in one table, then prefill_phase_bench's per-phase table of a
#              32k HeadKV prefill with each prefill kernel.
#     sweep    run_kernel_bench.py --sweep: the single-launch decode variants and their flags.
#     fused    bench/gpu_fused_decode.sh: the decode step's per-kernel table, unfused and fused.
#     headkv   decode_step_profile at batch 64 and 256, context 512, full KV then HeadKV B=128
#              rows (per-layer plans): where HeadKV's short-context decode step loses to full.
#     long     bench/gpu_long_prompt_bench.sh scenario: decode streams while 32k prompts arrive,
#              with prefill pacing (--max-step-ms 100 --max-prefill-share 0.35), with the default
#              prefill kernel (auto: wgmma on sm_90), then with mma.sync (SERVE_EXTRA_ARGS adds
#              more hkv serve flags). About 200 s each.
#
# Example (on the GPU machine, the bundle carried in .dev/b1):
#   mkdir -p /tmp/hkv && tar xJf .dev/b1/bundle.tar.xz -C /tmp/hkv
#   bash bench/gpu_session.sh /tmp/hkv "$OUT" tests
set -uo pipefail
dir="$1"; out="$2"; phase="$3"; shift 3
here="$(cd "$(dirname "$0")" && pwd)"
export LD_LIBRARY_PATH="$dir/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export HKV_SOURCE_DIR="${HKV_SOURCE_DIR:-$dir}"
export PYTHONUNBUFFERED=1
mkdir -p "$out/$phase"
log="$out/$phase.log"
pack() {
  cp "$log" "$out/$phase/" 2>/dev/null
  tar cJf "$out/$phase.tar.xz" -C "$out" "$phase" 2>/dev/null
}
trap pack EXIT
exec > >(tee -a "$log") 2>&1
echo "## $phase, $(date -u '+%Y-%m-%d %H:%M UTC')"
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
scores="$dir/bench/configs/Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json"

case "$phase" in
  tests)
    HKV_TEST_TIMEOUT="${HKV_TEST_TIMEOUT:-120}" bash "$here/run_gpu_tests.sh" "$dir" "$@"
    ;;
  kernels)
    python3 "$here/run_kernel_bench.py" --bin "$dir/bin/kernel_bench" --scores "$scores" \
      --json-out "$out/$phase/kernels.json"
    for kernel in mma wgmma; do
      echo "### prefill_phase_bench 32768 32768 headkv $kernel"
      timeout 120 "$dir/bin/prefill_phase_bench" 32768 32768 headkv "$kernel"
    done
    ;;
  sweep)
    python3 "$here/run_kernel_bench.py" --bin "$dir/bin/kernel_bench" --scores "$scores" --sweep \
      --json-out "$out/$phase/sweep.json"
    ;;
  fused)
    bash "$here/gpu_fused_decode.sh" "$dir"
    ;;
  headkv)
    "$dir/bin/decode_step_profile" --batch 64,256 --context 512 --steps 30 --mode unfused
    "$dir/bin/decode_step_profile" --batch 64,256 --context 512 --steps 30 --mode unfused \
      --headkv "$scores" --budget 128
    ;;
  long)
    pacing="--max-step-ms 100 --max-prefill-share 0.35"
    for kernel in auto mma; do
      SERVE_EXTRA_ARGS="$pacing --cuda-prefill-kernel $kernel ${SERVE_EXTRA_ARGS:-}" \
        bash "$here/gpu_long_prompt_bench.sh" "$dir/bin" "$scores" "$out/$phase/$kernel" \
        scenario 8192
    done
    ;;
  *)
    echo "unknown phase '$phase' (tests, kernels, sweep, fused, headkv, long)"
    exit 2
    ;;
esac
