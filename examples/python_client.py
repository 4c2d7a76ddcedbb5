#!/usr/bin/env python3
"""A minimal hkv client in Python (grpcio).

Generates the stubs from proto/hkv/v1/generation.proto at start, with protoc and
grpc_python_plugin when found (Debian: protobuf-compiler, protobuf-compiler-grpc), else with
grpcio-tools (one bundling protoc 3.15 or newer: the proto uses proto3 `optional`), then
streams one request and prints the text as it arrives.

    /usr/bin/python3 examples/python_client.py --target 127.0.0.1:50051 \
        --prompt "Once upon a time" --max-tokens 40 --kv-policy snapkv --kv-budget 16
"""
import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

import grpc

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def load_stubs():
    out = tempfile.mkdtemp(prefix="hkv_stubs_")
    proto_dir = os.path.join(ROOT, "proto")
    args = [f"-I{proto_dir}", f"--python_out={out}", f"--grpc_python_out={out}",
            os.path.join(proto_dir, "hkv/v1/generation.proto")]
    protoc_bin, plugin = shutil.which("protoc"), shutil.which("grpc_python_plugin")
    if protoc_bin and plugin:
        # The proto uses proto3 `optional` (protoc >= 3.15): Debian's python3-grpc-tools bundles
        # protoc 3.5, so the system protoc and gRPC plugin go first.
        rc = subprocess.call([protoc_bin, f"--plugin=protoc-gen-grpc_python={plugin}"] + args)
    else:
        from grpc_tools import protoc
        rc = protoc.main(["protoc"] + args)
    if rc != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return (importlib.import_module("hkv.v1.generation_pb2"),
            importlib.import_module("hkv.v1.generation_pb2_grpc"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--prompt", default="Once upon a time")
    ap.add_argument("--max-tokens", type=int, default=40)
    ap.add_argument("--temperature", type=float, default=0.0)
    ap.add_argument("--seed", type=int, default=None,
                    help="sampling seed (default: the server draws one and reports it)")
    ap.add_argument("--kv-policy", default="")
    ap.add_argument("--kv-budget", type=int, default=0)
    ap.add_argument("--timeout", type=float, default=60.0)
    args = ap.parse_args()
    pb, pb_grpc = load_stubs()
    with grpc.insecure_channel(args.target) as channel:
        stub = pb_grpc.GenerationStub(channel)
        info = stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=args.timeout)
        print(f"# model {info.model_name} ({info.architecture}), policies {list(info.kv_policies)}",
              file=sys.stderr)
        sampling = pb.SamplingParams(max_tokens=args.max_tokens, temperature=args.temperature)
        if args.seed is not None:
            sampling.seed = args.seed  # An optional field: 0 is a seed too.
        request = pb.GenerateRequest(
            prompt=args.prompt, sampling=sampling,
            kv_policy=pb.KvCachePolicy(name=args.kv_policy, budget=args.kv_budget))
        ids = []
        for response in stub.Generate(request, timeout=args.timeout):
            ids.extend(response.token_ids)
            sys.stdout.write(response.text)
            sys.stdout.flush()
            if response.finish_reason:
                u = response.usage
                print(f"\n# finish {pb.FinishReason.Name(response.finish_reason)}; "
                      f"{u.prompt_tokens} prompt + {u.generated_tokens} generated tokens; "
                      f"KV kept {u.kv_bytes_kept} of {u.kv_bytes_full} bytes; "
                      f"TTFT {u.time_to_first_token_ms:.1f} ms; seed {u.seed}", file=sys.stderr)
    print(f"# ids {ids}", file=sys.stderr)


if __name__ == "__main__":
    main()
