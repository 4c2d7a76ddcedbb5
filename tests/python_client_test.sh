#!/usr/bin/env bash
# Runs examples/python_client.py against a real `hkv serve` on a loopback port.
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
"$hkv" serve --host=127.0.0.1 --port="$port" --metrics-port=0 --http-port=0 --kv-pool-blocks=2048 \
  --num-threads=1 >/tmp/hkv_pyclient_$$.log 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  grep -q "listening" /tmp/hkv_pyclient_$$.log && break
  sleep 0.1
done
out=$("$py" "$root/examples/python_client.py" --target "127.0.0.1:$port" --prompt "Once upon a time" \
  --max-tokens 40 --kv-policy snapkv --kv-budget 16 2>&1)
echo "$out"
echo "$out" | grep -q "40 generated tokens"
echo "$out" | grep -q "finish FINISH_REASON_LENGTH"
echo "$out" | grep -Eq "; seed [0-9]+$"
echo "python client OK"
