#!/usr/bin/env bash
# GPU engine benchmark (run on the GPU machine; the numbers in bench/README.md come from it).
# Llama-3-8B-Instruct's config.json with random bf16 weights made on the GPU.
#
#   bench/gpu_engine_bench.sh BIN_DIR SCORES_JSON OUT_DIR single
#     copy bandwidth, single-stream decode at 1k context (CUDA graphs on and off) against the
#     bandwidth bound, and short-context serving at concurrency 256 (ShareGPT-like lengths).
#   bench/gpu_engine_bench.sh BIN_DIR SCORES_JSON OUT_DIR c256
#     the c256 runs alone (full KV and HeadKV B=128), async scheduling on then off (page-table
#     deltas on; C256_DELTAS=false sends the full CSR instead).
#   SERVE_EXTRA_ARGS adds hkv serve flags to every phase.
#   bench/gpu_engine_bench.sh BIN_DIR SCORES_JSON OUT_DIR long [NUM_COMPRESSED]
#     32k-token prompts, 256 output tokens through `hkv bench-serve`: full KV, SnapKV and
#     HeadKV at B = 128 and 1024 (LONG_SPECS="headkv 128" picks the compressed runs;
#     LONG_FULL=0 skips the full-KV run; LONG_BATCH_TOKENS sets --max-batch-tokens, default
#     8192). Capacity (max concurrent sequences) comes from the engine's exact footprint,
#     printed at start; the live runs report the streams decoded together.
#   bench/gpu_engine_bench.sh BIN_DIR SCORES_JSON OUT_DIR peer BATCHES
#     Hugging Face transformers on the same shapes (bench/hf_peer_bench.py).
#
# Each phase writes OUT_DIR/<phase>.md (a table) and OUT_DIR/<phase>.jsonl (raw rows).
set -euo pipefail
bin="$1"; scores="$2"; out="$3"; phase="$4"
here="$(cd "$(dirname "$0")" && pwd)"
cfg="$here/configs/Meta-Llama-3-8B-Instruct"
mkdir -p "$out"
py=python3
port=50093

start_server() {  # extra flags... (SERVE_TAG names the log: serve_<phase><tag>.log)
  slog="$out/serve_$phase${SERVE_TAG:-}.log"
  "$bin/hkv" serve --model "$cfg" --dummy-weights --device cuda --host 127.0.0.1 --port $port \
    --metrics-port 0 --head-scores "$scores" ${SERVE_EXTRA_ARGS:-} "$@" > "$slog" 2>&1 &
  server_pid=$!
  for _ in $(seq 1200); do
    grep -q listening "$slog" && break
    kill -0 $server_pid 2>/dev/null || { cat "$slog"; exit 1; }
    sleep 0.25
  done
  grep -E "GPU 0|KV pool|max sequences" "$slog" | sed 's/^/# /'
}
stop_server() { kill $server_pid 2>/dev/null; wait $server_pid 2>/dev/null || true; }
trap 'stop_server 2>/dev/null || true' EXIT

bench() {  # label, bench-serve flags...
  local label="$1"; shift
  "$bin/hkv" bench-serve --target 127.0.0.1:$port --json "$@" > "$out/bench.json" || true
  $py - "$label" "$out/bench.json" >> "$out/$phase.jsonl" <<'PY'
import json, sys
j = json.load(open(sys.argv[2])); j["label"] = sys.argv[1]; print(json.dumps(j))
PY
  $py - "$out/bench.json" "$label" <<'PY'
import json, sys
j = json.load(open(sys.argv[1]))
err = f" ({j['first_error'][:80]})" if "first_error" in j else ""
print(f"| {sys.argv[2]} | {j['successful_requests']}/{j['num_requests']} | "
      f"{j['max_concurrent_streams']} | {j['output_throughput']:.1f} | "
      f"{j['ttft_ms']['p50']/1e3:.2f} / {j['ttft_ms']['p99']/1e3:.2f} | "
      f"{j['tpot_ms']['p50']:.1f} / {j['tpot_ms']['p99']:.1f} | {j['duration_s']:.1f} |{err}")
PY
}

case "$phase" in
c256)  # the short-context c256 runs of `single` alone, async scheduling on and off
  deltas="${C256_DELTAS:-true}"
  {
    echo "## c256, async scheduling on vs off, page-table deltas $deltas ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    echo
    echo "| run | ok | max streams | output tok/s | TTFT p50 / p99 s | TPOT p50 / p99 ms | s |"
    echo "|---|---|---|---|---|---|---|"
    for async in true false; do
      # Stats every 5 s (schedule / execute / update per step) in serve_c256_async_*.log;
      # HKV_STEP_PROFILE=1 in the environment adds the worker's host vs GPU time per step kind.
      SERVE_TAG="_async_$async" start_server --max-seqs 256 --max-batch-tokens 8192 \
        --page-table-deltas=$deltas --async-scheduling=$async --stats-interval-s 5
      for policy in full headkv; do
        bench "c256 $policy async=$async" --num-requests 1024 --concurrency 256 \
          --input-len 256 --output-len 256 --range-ratio 0.5 --kv-policy $policy --kv-budget 128
      done
      stop_server
    done
  } | tee "$out/$phase.md"
  ;;
single)
  {
    echo "## Single stream and short context ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1))"
    $py - "$cfg/config.json" <<'PY'
import json, sys, torch
c = json.load(open(sys.argv[1]))
n = 4 << 30
x = torch.empty(n, dtype=torch.uint8, device="cuda"); y = torch.empty_like(x)
for _ in range(3): y.copy_(x)
torch.cuda.synchronize()
s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
s.record()
for _ in range(10): y.copy_(x)
e.record(); torch.cuda.synchronize()
bw = 2 * n * 10 / (s.elapsed_time(e) / 1e3)  # read + write bytes per second
d, L, hid, V = c["hidden_size"], c["num_hidden_layers"], c["intermediate_size"], c["vocab_size"]
hq, hk = c["num_attention_heads"], c["num_key_value_heads"]; hd = d // hq
per_layer = d * (hq * hd + 2 * hk * hd) + hq * hd * d + 3 * d * hid + 2 * d
weights = 2 * (L * per_layer + V * d + d)  # read per decode step: every layer + lm_head
kv_1k = 2 * 2 * hd * hk * L * 1024       # K and V of 1k tokens, bf16
bound = bw / (weights + kv_1k)
json.dump({"copy_bw": bw, "weights_read": weights, "kv_1k": kv_1k, "bound_tok_s": bound},
          open("/tmp/hkv_bound.json", "w"))
print(f"copy bandwidth {bw/1e12:.2f} TB/s; bytes per decode step at 1k context "
      f"{(weights+kv_1k)/1e9:.2f} GB (weights {weights/1e9:.2f} + KV {kv_1k/1e6:.0f} MB) "
      f"-> bound {bound:.1f} tok/s")
PY
    ids=$($py -c "print(','.join(['128000'] + [str(1000 + (i * 7919) % 120000) for i in range(1023)]))")
    echo
    echo "| decode | prompt | generated | prefill ms | decode tok/s | of bound |"
    echo "|---|---|---|---|---|---|"
    for graphs in 256 0; do
      j=$("$bin/hkv" generate --model "$cfg" --dummy-weights --device cuda --prompt-ids "$ids" \
        --max-tokens 256 --ignore-eos --cuda-graph-max-batch $graphs --json 2>/dev/null)
      $py - "$graphs" "$j" <<'PY'
import json, sys
j = json.loads(sys.argv[2]); b = json.load(open("/tmp/hkv_bound.json"))
name = "CUDA graphs" if sys.argv[1] != "0" else "eager"
r = j["decode_tokens_per_s"]
print(f"| {name} | {len(j['prompt_ids'])} | {len(j['output_ids'])} | {j['prefill_ms']:.1f} | "
      f"{r:.1f} | {100*r/b['bound_tok_s']:.0f}% of {b['bound_tok_s']:.0f} |")
PY
    done
    echo
    # Stats lines every 5 s in the server log: steps, tokens per step and where each step's
    # time goes (schedule / execute / update), for comparing the c256 runs.
    start_server --max-seqs 256 --max-batch-tokens 8192 --stats-interval-s 5
    echo
    echo "| run | ok | max streams | output tok/s | TTFT p50 / p99 s | TPOT p50 / p99 ms | s |"
    echo "|---|---|---|---|---|---|---|"
    bench "short c1 in 256±50% out 256±50%" --num-requests 8 --concurrency 1 --input-len 256 \
      --output-len 256 --range-ratio 0.5
    bench "short c256 in 256±50% out 256±50%" --num-requests 1024 --concurrency 256 \
      --input-len 256 --output-len 256 --range-ratio 0.5
    bench "short c256 in 256±50% out 256±50% headkv B=128" --num-requests 1024 \
      --concurrency 256 --input-len 256 --output-len 256 --range-ratio 0.5 --kv-policy headkv \
      --kv-budget 128
    stop_server
  } | tee "$out/$phase.md"
  ;;
long)
  ncomp="${5:-32}"
  {
    echo "## Long context: 32k-token prompts, 256 output tokens"
    echo "--max-batch-tokens ${LONG_BATCH_TOKENS:-8192}"
    start_server --max-seqs 512 --max-model-len 33024 --max-batch-tokens "${LONG_BATCH_TOKENS:-8192}" \
      --default-kv-policy headkv --default-kv-budget 128
    echo
    echo "| run | ok | max streams | output tok/s | TTFT p50 / p99 s | TPOT p50 / p99 ms | s |"
    echo "|---|---|---|---|---|---|---|"
    if [ "${LONG_FULL:-1}" != 0 ]; then
      bench "full KV" --num-requests 16 --concurrency 16 --input-len 32768 --output-len 256 \
        --kv-policy full
    fi
    IFS=, read -r -a specs <<< "${LONG_SPECS:-snapkv 128,headkv 128,snapkv 1024,headkv 1024}"
    for spec in "${specs[@]}"; do
      set -- $spec
      bench "$1 B=$2" --num-requests "$ncomp" --concurrency "$ncomp" --input-len 32768 \
        --output-len 256 --kv-policy "$1" --kv-budget "$2"
    done
    stop_server
  } | tee "$out/$phase.md"
  ;;
peer)
  batches="${5:-1,4,8}"
  PYTHONUNBUFFERED=1 $py "$here/hf_peer_bench.py" --config "$cfg" --input-len 32768 \
    --output-len 256 --batch-sizes "$batches" --json-out "$out/peer.json" --time-limit-s 420 \
    | tee "$out/$phase.md"
  ;;
*)
  echo "unknown phase $phase" >&2; exit 2 ;;
esac
