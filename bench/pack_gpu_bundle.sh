#!/usr/bin/env bash
# Packs a CUDA build for a GPU machine that lacks gRPC, Protobuf, Abseil and friends into
# OUT/bundle.tar.xz: the named binaries (stripped) in bin/, the shared libraries they need from
# the system (not glibc, not CUDA) in lib/, and the repository data the tests and the default
# model read (models/stories260K, tests/data) and the model configs of the host benches
# (bench/configs, with the HeadKV score files of the shared folder) beside them. There:
# export LD_LIBRARY_PATH=DIR/lib; the binaries find the data beside their bin/ from any working
# directory (common/paths.h), or wherever HKV_SOURCE_DIR points.
# Usage: bench/pack_gpu_bundle.sh BUILD_DIR OUT_DIR binary...
set -euo pipefail
build="$1"; out="$2"; shift 2
repo="$(cd "$(dirname "$0")/.." && pwd)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT
mkdir -p "$out" "$stage/bin" "$stage/lib" "$stage/models" "$stage/tests" "$stage/bench"
for b in "$@"; do
  cp "$build/bin/$b" "$stage/bin/"
  strip "$stage/bin/$b"
  ldd "$build/bin/$b" | awk '$3 ~ /^\// {print $3}' |
    grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so|/usr/local/cuda' |
    while read -r lib; do cp -n "$lib" "$stage/lib/" 2>/dev/null || true; done
done
cp -r "$repo/models/stories260K" "$stage/models/"
cp -r "$repo/tests/data" "$stage/tests/"
cp -r "$repo/bench/configs" "$stage/bench/"
# The published HeadKV score files beside the configs, where gpu_session.sh and the GPU benches
# look for them (the GPU machine has no shared folder).
shared="${HKV_SHARED_DIR:-$repo/../shared}"
if ! cp "$shared"/headkv_scores/*.json "$stage/bench/configs/"; then
  echo "pack_gpu_bundle.sh: no HeadKV score files in $shared/headkv_scores" >&2
  exit 1
fi
du -sh "$stage"
# One compressed file (the device tool carries at most 64 MiB): unpack there with
#   mkdir -p /tmp/hkv && tar xJf OUT/bundle.tar.xz -C /tmp/hkv
tar cJf "$out/bundle.tar.xz" -C "$stage" bin lib models tests bench
du -sh "$out/bundle.tar.xz"
