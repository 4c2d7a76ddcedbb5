#!/usr/bin/env bash
# Multi-node step transport overhead (run on a 2-GPU machine): Llama-3-8B-Instruct's config with
# random bf16 weights, served three ways and driven by `hkv bench-serve` (1k-token prompts, 256
# output tokens): TP=1; TP=2 in one process (one thread per GPU); TP=2 as two processes, one GPU
# each, joined over TCP + NCCL exactly as two LeaderWorkerSet pods are (steps sent over TCP).
#   bench/gpu_multinode_bench.sh BIN_DIR OUT_DIR
set -euo pipefail
bin="$1"; out="$2"
here="$(cd "$(dirname "$0")" && pwd)"
cfg="$here/configs/Meta-Llama-3-8B-Instruct"
mkdir -p "$out"
export NCCL_NVLS_ENABLE="${NCCL_NVLS_ENABLE:-0}"
port=50095; dist=29517
common=(--model "$cfg" --dummy-weights --device cuda --host 127.0.0.1 --metrics-port 0
        --max-seqs 64 --max-model-len 4096)

wait_listening() {  # log pid
  for _ in $(seq 1200); do
    grep -q listening "$1" && return 0
    kill -0 "$2" 2>/dev/null || { cat "$1"; return 1; }
    sleep 0.25
  done
  return 1
}

run_bench() {  # name
  local name="$1"
  "$bin/hkv" bench-serve --target 127.0.0.1:$port --json --num-requests 6 --concurrency 1 \
    --input-len 1024 --output-len 256 > "$out/${name}_c1.json"
  "$bin/hkv" bench-serve --target 127.0.0.1:$port --json --num-requests 64 --concurrency 32 \
    --input-len 1024 --output-len 256 > "$out/${name}_c32.json"
  python3 - "$out/${name}_c1.json" "$out/${name}_c32.json" "$name" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
tpot = a["tpot_ms"]["p50"]
print(f"| {sys.argv[3]} | {a['successful_requests']}/{a['num_requests']}, "
      f"{b['successful_requests']}/{b['num_requests']} | {tpot:.2f} | {1000 / tpot:.1f} | "
      f"{b['output_throughput']:.0f} | {b['tpot_ms']['p50']:.2f} |")
PY
}

{
echo "## Multi-node transport ($(nvidia-smi --query-gpu=name --format=csv,noheader | head -1) x $(nvidia-smi -L | wc -l))"
echo
echo "| run | ok (1 stream, 32 streams) | TPOT p50 ms, 1 stream | tok/s, 1 stream | output tok/s, 32 streams | TPOT p50 ms, 32 streams |"
echo "|---|---|---|---|---|---|"
# TP=1 and TP=2 in one process.
for tp in 1 2; do
  "$bin/hkv" serve "${common[@]}" --port $port --tensor-parallel-size $tp > "$out/serve_tp$tp.log" 2>&1 &
  pid=$!
  wait_listening "$out/serve_tp$tp.log" $pid
  run_bench "TP=$tp, one process"
  kill $pid; wait $pid 2>/dev/null || true
done
# TP=2 as two processes (node 1 on GPU 1, node 0 on GPU 0).
CUDA_VISIBLE_DEVICES=1 "$bin/hkv" serve "${common[@]}" --tensor-parallel-size 2 --world-size 2 \
  --rank 1 --dist-addr 127.0.0.1:$dist > "$out/serve_node1.log" 2>&1 &
follower=$!
CUDA_VISIBLE_DEVICES=0 "$bin/hkv" serve "${common[@]}" --port $port --tensor-parallel-size 2 \
  --world-size 2 --rank 0 --dist-addr 127.0.0.1:$dist > "$out/serve_node0.log" 2>&1 &
leader=$!
wait_listening "$out/serve_node0.log" $leader
run_bench "TP=2, two processes (TCP steps)"
kill $leader; wait $leader 2>/dev/null || true
rc=0; wait $follower 2>/dev/null || rc=$?
echo; echo "node 1 exit status after node 0 drained: $rc"
} | tee "$out/multinode.md"
