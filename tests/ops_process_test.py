#!/usr/bin/env python3
"""`hkv serve` with TLS, API keys, the health-only port and JSON logs, driven as an outsider
would: grpcio's own TLS client and urllib's HTTPS, certificates made here with openssl.

Checks: the API answers only TLS; a call without a key or with a wrong one is UNAUTHENTICATED;
keys from the flag (repeated) and from the file both work; x-request-id comes back in the
initial metadata and in the responses; the plaintext health port answers SERVING; /metrics is
HTTPS with vLLM names; the OpenAI-compatible HTTP API speaks HTTPS, needs a key (401
invalid_api_key) and echoes X-Request-Id; every stderr log line is one JSON object; the finished request's line
carries its id, tenant, traceparent and usage; a periodic stats line appears; SIGTERM exits 0.
Usage: ops_process_test.py HKV_BINARY   (exit 77: skipped, no grpcio or openssl)
"""
import json
import os
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request

try:
    import grpc
except ImportError:
    print("python3-grpcio missing")
    sys.exit(77)
if shutil.which("openssl") is None:
    print("openssl missing")
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "examples"))
import python_client  # noqa: E402  (generates the stubs)

TRACEPARENT = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
failures = []


def check(cond, msg):
    if not cond:
        failures.append(msg)
    return cond


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def make_certs(d):
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1", "-nodes"]
    run = lambda *a: subprocess.run(a, check=True, capture_output=True)  # noqa: E731
    run("openssl", "req", "-x509", *ec, "-keyout", f"{d}/ca.key", "-out", f"{d}/ca.pem",
        "-days", "2", "-subj", "/CN=ops-test-ca")
    with open(f"{d}/ext", "w") as f:
        f.write("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    run("openssl", "req", *ec, "-keyout", f"{d}/server.key", "-out", f"{d}/server.csr",
        "-subj", "/CN=localhost")
    run("openssl", "x509", "-req", "-in", f"{d}/server.csr", "-CA", f"{d}/ca.pem", "-CAkey",
        f"{d}/ca.key", "-CAcreateserial", "-days", "2", "-out", f"{d}/server.pem", "-extfile",
        f"{d}/ext")


def health(port, service="hkv.v1.Generation"):
    channel = grpc.insecure_channel(f"127.0.0.1:{port}")
    field = service.encode()
    call = channel.unary_unary("/grpc.health.v1.Health/Check")
    try:
        reply = call(b"\x0a" + bytes([len(field)]) + field, timeout=1, wait_for_ready=True)
        return reply[1] if reply[:1] == b"\x08" else 0
    except grpc.RpcError as e:
        return e.code()
    finally:
        channel.close()


def check_http_api(http_port, context):
    """The OpenAI-compatible API over HTTPS: a key needed (401 invalid_api_key without), the
    request id echoed and in the response id, /health open."""
    url = f"https://localhost:{http_port}"
    body = json.dumps({"prompt": "Once upon a time", "max_tokens": 5, "ignore_eos": True})
    for key in (None, "wrong-key-0000000001"):
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        req = urllib.request.Request(f"{url}/v1/completions", data=body.encode(), headers=headers)
        try:
            urllib.request.urlopen(req, context=context, timeout=10)
            failures.append(f"HTTP completion with key {key!r} was served")
        except urllib.error.HTTPError as e:
            check(e.code == 401, f"HTTP key {key!r}: {e.code} instead of 401")
            check(json.loads(e.read())["error"]["code"] == "invalid_api_key", "no invalid_api_key")
    req = urllib.request.Request(f"{url}/v1/completions", data=body.encode(), headers={
        "Content-Type": "application/json", "Authorization": "Bearer file-key-000000001",
        "X-Request-Id": "py-http-1", "traceparent": TRACEPARENT})
    with urllib.request.urlopen(req, context=context, timeout=30) as r:
        check(r.headers.get("X-Request-Id") == "py-http-1", "HTTP X-Request-Id not echoed")
        check(json.loads(r.read())["id"] == "cmpl-py-http-1", "HTTP response id")
    with urllib.request.urlopen(f"{url}/health", context=context, timeout=10) as r:
        check(r.status == 200, "HTTPS /health needs a key")


def main():
    hkv = sys.argv[1]
    pb2, pb2_grpc = python_client.load_stubs()
    d = tempfile.mkdtemp(prefix="hkv_ops_")
    make_certs(d)
    with open(f"{d}/keys.txt", "w") as f:
        f.write("# tenant keys\nfile-key-000000001 team-a\n")
    port, mport, hport, http_port = free_port(), free_port(), free_port(), free_port()
    log_path = f"{d}/serve.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [hkv, "serve", "--host=127.0.0.1", f"--port={port}", "--metrics-host=127.0.0.1",
         f"--metrics-port={mport}", f"--health-port={hport}", f"--http-port={http_port}",
         f"--tls-cert={d}/server.pem",
         f"--tls-key={d}/server.key", f"--api-key-file={d}/keys.txt",
         "--api-key=flag-key-000000001", "--api-key", "flag-key-000000002",
         "--log-format=json", "--stats-interval-s=1", "--kv-pool-blocks=2048",
         "--num-threads=1"], stdout=subprocess.DEVNULL, stderr=log)
    try:
        deadline = time.time() + 60
        while time.time() < deadline and proc.poll() is None and health(hport) != 1:
            time.sleep(0.2)
        if not check(health(hport) == 1, "the plaintext health port never answered SERVING"):
            return
        check(health(hport, "") == 1, "liveness not SERVING on the health port")
        with open(f"{d}/ca.pem", "rb") as f:
            creds = grpc.ssl_channel_credentials(root_certificates=f.read())
        channel = grpc.secure_channel(f"127.0.0.1:{port}", creds,
                                      options=[("grpc.ssl_target_name_override", "localhost")])
        stub = pb2_grpc.GenerationStub(channel)
        for key in (None, "wrong-key-0000000001"):
            md = [("authorization", f"Bearer {key}")] if key else []
            try:
                stub.GetModelInfo(pb2.GetModelInfoRequest(), metadata=md, timeout=10)
                failures.append(f"GetModelInfo with key {key!r} was served")
            except grpc.RpcError as e:
                check(e.code() == grpc.StatusCode.UNAUTHENTICATED,
                      f"key {key!r}: {e.code()} instead of UNAUTHENTICATED")
        for key in ("flag-key-000000001", "flag-key-000000002"):
            info = stub.GetModelInfo(pb2.GetModelInfoRequest(),
                                     metadata=[("authorization", f"Bearer {key}")], timeout=10)
            check(info.vocab_size > 0, f"key {key}: no model info")
        request = pb2.GenerateRequest(prompt="Once upon a time")
        request.sampling.max_tokens = 12
        request.sampling.ignore_eos = True
        call = stub.Generate(request, timeout=30, metadata=[
            ("authorization", "Bearer file-key-000000001"), ("x-request-id", "py-req-1"),
            ("traceparent", TRACEPARENT)])
        responses = list(call)
        echoed = dict(call.initial_metadata()).get("x-request-id")
        check(echoed == "py-req-1", f"x-request-id echoed as {echoed!r}")
        check(all(r.request_id == "py-req-1" for r in responses), "responses carry another id")
        check(sum(len(r.token_ids) for r in responses) == 12, "not 12 tokens")
        plain = pb2_grpc.GenerationStub(grpc.insecure_channel(f"127.0.0.1:{port}"))
        try:
            plain.GetModelInfo(pb2.GetModelInfoRequest(), timeout=3)
            failures.append("the API port answered plaintext")
        except grpc.RpcError as e:
            check(e.code() == grpc.StatusCode.UNAVAILABLE, f"plaintext: {e.code()}")
        context = ssl.create_default_context(cafile=f"{d}/ca.pem")
        body = urllib.request.urlopen(f"https://localhost:{mport}/metrics", context=context,
                                      timeout=10).read().decode()
        check('vllm:num_requests_running{model_name="' in body, "no vllm:num_requests_running")
        check('vllm:request_success_total{model_name="' in body, "no vllm:request_success_total")
        check_http_api(http_port, context)
        deadline = time.time() + 10
        while time.time() < deadline and '"msg":"stats"' not in open(log_path).read():
            time.sleep(0.2)
        channel.close()
        proc.send_signal(signal.SIGTERM)
        check(proc.wait(timeout=45) == 0, "hkv serve did not exit 0 after SIGTERM")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        log.close()
    records = []
    for line in open(log_path):
        if line.startswith("{"):
            try:
                records.append(json.loads(line))
            except ValueError:
                failures.append(f"log line is not JSON: {line.strip()}")
    finished = [r for r in records if r.get("msg") == "request finished"]
    mine = [r for r in finished if r.get("request_id") == "py-req-1"]
    if check(len(mine) == 1, f"{len(mine)} finished-request lines for py-req-1"):
        r = mine[0]
        check(r.get("tenant") == "team-a", f"tenant {r.get('tenant')}")
        check(r.get("traceparent") == TRACEPARENT, "traceparent not propagated")
        check(r.get("generated_tokens") == 12 and r.get("prompt_tokens", 0) > 0, "token counts")
        check(r.get("finish_reason") == "length" and r.get("status") == "OK", "finish/status")
        for key in ("queue_ms", "ttft_ms", "e2e_ms", "kv_tokens_kept", "kv_tokens_full",
                    "preemptions"):
            check(isinstance(r.get(key), (int, float)), f"{key} missing or not a number")
    mine = [r for r in finished if r.get("request_id") == "py-http-1"]
    if check(len(mine) == 1, f"{len(mine)} finished-request lines for py-http-1"):
        r = mine[0]
        check(r.get("tenant") == "team-a" and r.get("traceparent") == TRACEPARENT,
              f"HTTP request line: tenant {r.get('tenant')}, traceparent {r.get('traceparent')}")
        check(r.get("generated_tokens") == 5 and r.get("status") == "OK", "HTTP token counts")
    stats = [r for r in records if r.get("msg") == "stats"]
    check(stats and all(k in stats[0] for k in ("running", "waiting", "kv_pool_used",
                                                "generation_tokens_per_s")), "no stats line")
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    main()
    if failures:
        print("FAILED:\n - " + "\n - ".join(failures))
        sys.exit(1)
    print("ops process test OK")
