#!/usr/bin/env python3
"""Streams sampled generations from an hkv server with Python's grpcio, for utf8_output_test.

    utf8_stream_client.py TARGET MAX_TOKENS TEMPERATURE SEED...

Prints one JSON line per seed: {"seed", "status" ("OK" or the gRPC code), "details", "ids",
"texts" (every delta)}. A delta that is not valid UTF-8 makes grpcio fail the whole stream
("Exception deserializing response"), which shows up here as a non-OK status. Exits 77 when
grpcio, or both protoc with grpc_python_plugin and grpc_tools, are missing.
"""
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

try:
    import grpc
except ImportError:
    sys.exit(77)

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


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
        try:
            from grpc_tools import protoc
        except ImportError:
            sys.exit(77)
        rc = protoc.main(["protoc"] + args)
    if rc != 0:
        sys.exit("protoc failed")
    sys.path.insert(0, out)
    return (importlib.import_module("hkv.v1.generation_pb2"),
            importlib.import_module("hkv.v1.generation_pb2_grpc"))


def main():
    target, max_tokens, temperature = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    pb, pb_grpc = load_stubs()
    with grpc.insecure_channel(target) as channel:
        stub = pb_grpc.GenerationStub(channel)
        for seed in (int(s) for s in sys.argv[4:]):
            request = pb.GenerateRequest(
                prompt_token_ids=pb.TokenIds(ids=[1]),
                sampling=pb.SamplingParams(max_tokens=max_tokens, temperature=temperature,
                                           seed=seed, ignore_eos=True))
            result = {"seed": seed, "status": "OK", "details": "", "ids": [], "texts": []}
            try:
                for response in stub.Generate(request, timeout=20):
                    result["ids"].extend(response.token_ids)
                    result["texts"].append(response.text)
            except grpc.RpcError as e:
                result["status"] = e.code().name
                result["details"] = e.details() or ""
            print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
