#!/usr/bin/env bash
# Decode streams while long prompts arrive (issue 18; run on the GPU machine). Llama-3-8B's
# config with random bf16 weights made on the GPU, `hkv serve --device cuda`, two
# `hkv bench-serve` clients over loopback sharing the host clock (--token-times-out).
#
#   bench/gpu_long_prompt_bench.sh BIN_DIR SCORES_JSON OUT_DIR scenario [MAX_BATCH_TOKENS]
#     8 greedy decode streams (128-token prompts, full KV) alone, then again with 2 prompts of
#     32k tokens arriving 3 s in, HeadKV B=128, then full KV. Reports the streams' ITL p50 /
#     p99 / max over the run, their worst gap and decode tok/s while the long prompts prefill
#     (from the prompts' send to their last first token) against the same window of the run
#     alone, and the long prompts' TTFT.
#   bench/gpu_long_prompt_bench.sh BIN_DIR SCORES_JSON OUT_DIR sweep [MAX_BATCH_TOKENS...]
#     The HeadKV run above for each --max-batch-tokens (default 1024 2048 4096 8192 16384):
#     chunk size vs the long prompts' TTFT vs the decode streams' worst gap and throughput.
#
# Environment: DECODE_STREAMS (8), DECODE_OUT (3000 tokens each: they must outlast the long
# prompts), LONG_PROMPTS (2), LONG_LEN (32768), ARRIVE_S (3), SERVE_MODEL_ARGS (the model and
# device flags of `hkv serve`; e.g. "--device cpu" with LONG_LEN=300 DECODE_OUT=60 smoke-tests
# the script on stories260K without a GPU), SERVE_EXTRA_ARGS (more `hkv serve` flags, e.g.
# "--max-step-ms 100 --max-prefill-share 0.35" for prefill pacing).
# Each run appends a row to OUT_DIR/<phase>.md and its raw numbers to OUT_DIR/<phase>.jsonl.
set -euo pipefail
bin="$1"; scores="$2"; out="$3"; phase="${4:-scenario}"
shift 4 || shift $#
here="$(cd "$(dirname "$0")" && pwd)"
cfg="$here/configs/Meta-Llama-3-8B-Instruct"
mkdir -p "$out"
port=50095
streams="${DECODE_STREAMS:-8}"; decode_out="${DECODE_OUT:-3000}"
nlong="${LONG_PROMPTS:-2}"; long_len="${LONG_LEN:-32768}"; arrive="${ARRIVE_S:-3}"

start_server() {  # max_batch_tokens
  # shellcheck disable=SC2086
  "$bin/hkv" serve ${SERVE_MODEL_ARGS:---model "$cfg" --dummy-weights --device cuda} \
    --host 127.0.0.1 --port $port \
    --metrics-port 0 --head-scores "$scores" --max-seqs 256 --max-model-len $((long_len + 256)) \
    --max-batch-tokens "$1" ${SERVE_EXTRA_ARGS:-} > "$out/serve_$1.log" 2>&1 &
  server_pid=$!
  for _ in $(seq 1200); do
    grep -q listening "$out/serve_$1.log" && break
    kill -0 $server_pid 2>/dev/null || { cat "$out/serve_$1.log"; exit 1; }
    sleep 0.25
  done
}
stop_server() { kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null || true; }
trap 'stop_server 2>/dev/null || true' EXIT

decode_streams() {  # tag
  "$bin/hkv" bench-serve --target 127.0.0.1:$port --json --num-requests "$streams" \
    --concurrency "$streams" --input-len 128 --output-len "$decode_out" --kv-policy full \
    --token-times-out "$out/decode_$1.times" > "$out/decode_$1.json" || true
}

# One run: the decode streams alone (once per server), then with the long prompts of `policy`.
run() {  # max_batch_tokens policy
  local mbt="$1" policy="$2"
  [ -f "$out/decode_alone_$mbt.json" ] || decode_streams "alone_$mbt"
  decode_streams "with_${policy}_$mbt" &
  local decode_pid=$!
  sleep "$arrive"
  "$bin/hkv" bench-serve --target 127.0.0.1:$port --json --num-requests "$nlong" \
    --concurrency "$nlong" --input-len "$long_len" --output-len 16 --kv-policy "$policy" \
    --kv-budget 128 --token-times-out "$out/long_${policy}_$mbt.times" \
    > "$out/long_${policy}_$mbt.json" || true
  wait $decode_pid
  python3 - "$out" "$mbt" "$policy" "$PHASE" <<'PY'
import json, sys
out, mbt, policy, phase = sys.argv[1:5]
def times(path):
    return [json.loads(l) for l in open(path) if l.strip()]
def tokens_in(recs, t0, t1):
    return sum(1 for r in recs for t in r["token_s"] if t0 <= t <= t1)
def max_gap(recs, t0=float("-inf"), t1=float("inf")):
    gaps = [b - a for r in recs for a, b in zip(r["token_s"], r["token_s"][1:])
            if b >= t0 and a <= t1]
    return 1e3 * max(gaps, default=0.0)
with_j = json.load(open(f"{out}/decode_with_{policy}_{mbt}.json"))
alone_j = json.load(open(f"{out}/decode_alone_{mbt}.json"))
long_j = json.load(open(f"{out}/long_{policy}_{mbt}.json"))
with_t = times(f"{out}/decode_with_{policy}_{mbt}.times")
alone_t = times(f"{out}/decode_alone_{mbt}.times")
long_t = times(f"{out}/long_{policy}_{mbt}.times")
# The window: from the long prompts' send to their last first token (all prefilled).
w0 = long_j["start_unix_s"]
w1 = max(r["token_s"][0] for r in long_t) if long_t else w0
span = max(w1 - w0, 1e-9)
# The same window, relative to its run's start, in the run alone.
a0 = alone_j["start_unix_s"] + (w0 - with_j["start_unix_s"])
row = {
    "max_batch_tokens": int(mbt), "policy": policy,
    "long_ok": long_j["successful_requests"], "long_sent": long_j["num_requests"],
    "long_ttft_s": [long_j["ttft_ms"]["p50"] / 1e3, long_j["ttft_ms"]["max"] / 1e3],
    "itl_p50_ms": with_j["itl_ms"]["p50"], "itl_p99_ms": with_j["itl_ms"]["p99"],
    "itl_p999_ms": with_j["itl_ms"]["p99.9"], "itl_max_ms": with_j["itl_ms"]["max"],
    "window_s": span, "window_max_gap_ms": max_gap(with_t, w0, w1),
    "window_tok_s": tokens_in(with_t, w0, w1) / span,
    "alone_tok_s": tokens_in(alone_t, a0, a0 + span) / span,
    "alone_itl_max_ms": alone_j["itl_ms"]["max"],
    "decode_tok_s_run": with_j["output_throughput"], "alone_tok_s_run": alone_j["output_throughput"],
}
row["window_ratio"] = row["window_tok_s"] / max(row["alone_tok_s"], 1e-9)
with open(f"{out}/{phase}.jsonl", "a") as f:
    f.write(json.dumps(row) + "\n")
r = row
with open(f"{out}/{phase}.md", "a") as f:
    f.write(f"| {mbt} | {policy} ({r['long_ok']}/{r['long_sent']} ok) | "
            f"{r['long_ttft_s'][0]:.2f} / {r['long_ttft_s'][1]:.2f} | "
            f"{r['itl_p50_ms']:.1f} / {r['itl_p99_ms']:.1f} / {r['itl_max_ms']:.0f} | "
            f"{r['window_max_gap_ms']:.0f} | {r['window_tok_s']:.0f} / {r['alone_tok_s']:.0f} "
            f"({100 * r['window_ratio']:.0f}%) | {r['alone_itl_max_ms']:.0f} |\n")
PY
}

header() {
  {
    gpu="$(nvidia-smi --query-gpu=name,driver_version --format=csv,noheader 2>/dev/null | head -1 || true)"
    echo "## $1 (${gpu:-no GPU}, $(date -u +%F))"
    echo
    echo "$streams greedy decode streams (128-token prompts, full KV, $decode_out tokens each);" \
      "$nlong prompts of $long_len tokens arrive ${arrive} s in (B=128). Window: from their send" \
      "to their last first token; alone: the same window of the streams' run without them."
    echo
    echo "| --max-batch-tokens | long prompts | TTFT p50 / max s | decode ITL p50 / p99 / max ms | worst gap in window ms | decode tok/s in window vs alone | alone ITL max ms |"
    echo "|---|---|---|---|---|---|---|"
  } >> "$out/$PHASE.md"
}

case "$phase" in
scenario)
  export PHASE=scenario
  mbt="${1:-8192}"
  header "Decode streams while long prompts arrive"
  start_server "$mbt"
  run "$mbt" headkv
  run "$mbt" full
  stop_server
  ;;
sweep)
  export PHASE=sweep
  header "Chunk size sweep (HeadKV B=128 long prompts)"
  for mbt in ${@:-1024 2048 4096 8192 16384}; do
    start_server "$mbt"
    run "$mbt" headkv
    stop_server
  done
  ;;
*)
  echo "usage: $0 BIN_DIR SCORES_JSON OUT_DIR scenario [MAX_BATCH_TOKENS] | sweep [MBT...]" >&2
  exit 1
  ;;
esac
cat "$out/$PHASE.md"
