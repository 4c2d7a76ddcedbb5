#!/usr/bin/env bash
# Runs tests/python_sampling_test.py (logprobs, penalties, n > 1 over gRPC) against a real
# `hkv serve` on a loopback port.
set -euo pipefail
hkv="$1"
root="$(cd "$(dirname "$0")/.." && pwd)"
py=/usr/bin/python3
"$py" -c "import grpc" 2>/dev/null || { echo "python3-grpcio missing"; exit 77; }
if ! { command -v protoc && command -v grpc_python_plugin; } >/dev/null &&
   ! "$py" -c "import grpc_tools" 2>/dev/null; then
  echo "no protoc + grpc_python_plugin nor grpc_tools"; exit 77
fi
port=$("$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
log=$(mktemp /tmp/hkv_pysampling_XXXXXX.log)
"$hkv" serve --host=127.0.0.1 --port="$port" --metrics-port=0 --kv-pool-blocks=2048 \
  --num-threads=1 >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true; rm -f "$log"' EXIT
for _ in $(seq 100); do
  grep -q "listening" "$log" && break
  sleep 0.1
done
"$py" "$root/tests/python_sampling_test.py" "127.0.0.1:$port"
