#!/usr/bin/env bash
# The official `openai` npm package (installed at test time into the build directory, never
# vendored) against a real `hkv serve --http-port` on loopback, serving the needle fixture
# (tests/data/needle) with a Llama-3 chat template. Skips (77) only when node/npm are missing
# or the package cannot be installed (no registry and no earlier install).
set -euo pipefail
hkv="$1"
work="$2"  # A folder of the build tree for node_modules and the model directory.
root="$(cd "$(dirname "$0")/.." && pwd)"
py=/usr/bin/python3
command -v node >/dev/null && command -v npm >/dev/null || { echo "node/npm missing"; exit 77; }
mkdir -p "$work"
cp "$root/tests/openai_node/package.json" "$root/tests/openai_node/openai_sdk_test.mjs" "$work/"
if [ ! -f "$work/node_modules/openai/package.json" ]; then
  (cd "$work" && timeout 300 npm install --no-audit --no-fund --no-save openai >npm.log 2>&1) || {
    cat "$work/npm.log"; echo "npm could not install openai"; exit 77; }
fi
echo "openai $(node -p "require('$work/node_modules/openai/package.json').version")"

# The needle model, plus the Llama-3 chat template in its tokenizer_config.json.
model="$work/needle-chat"
mkdir -p "$model"
for f in config.json generation_config.json model.safetensors tokenizer.json; do
  ln -sf "$root/tests/data/needle/$f" "$model/$f"
done
"$py" - "$root/tests/data/needle/tokenizer_config.json" "$model/tokenizer_config.json" <<'PY'
import json, sys
config = json.load(open(sys.argv[1]))
config["chat_template"] = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
json.dump(config, open(sys.argv[2], "w"))
PY

free_port() { "$py" -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
http_port=$(free_port)
log="$work/serve.log"
api_key="sdk-test-key-0123456789"
"$hkv" serve --model="$model" --host=127.0.0.1 --port=0 --metrics-port=0 \
  --http-port="$http_port" --kv-pool-blocks=4096 --num-threads=1 --api-key="$api_key" \
  >"$log" 2>&1 &
pid=$!
trap 'kill $pid 2>/dev/null || true; wait $pid 2>/dev/null || true' EXIT
for _ in $(seq 300); do
  grep -q "listening" "$log" && break
  kill -0 $pid 2>/dev/null || { cat "$log"; exit 1; }
  sleep 0.1
done
grep -q "listening" "$log" || { cat "$log"; exit 1; }
node "$work/openai_sdk_test.mjs" "http://127.0.0.1:$http_port/v1" needle-chat "$api_key"
