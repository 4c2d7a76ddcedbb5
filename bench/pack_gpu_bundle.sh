#!/usr/bin/env bash
# Packs a CUDA build for a GPU machine that lacks gRPC, Protobuf, Abseil and friends: the named
# binaries (stripped) into OUT/bin and the shared libraries they need from the system (not
# glibc, not CUDA) into OUT/lib. There: export LD_LIBRARY_PATH=OUT/lib.
# Usage: bench/pack_gpu_bundle.sh BUILD_DIR OUT_DIR binary...
set -euo pipefail
build="$1"; out="$2"; shift 2
rm -rf "$out/bin" "$out/lib"
mkdir -p "$out/bin" "$out/lib"
for b in "$@"; do
  cp "$build/bin/$b" "$out/bin/"
  strip "$out/bin/$b"
  ldd "$build/bin/$b" | awk '$3 ~ /^\// {print $3}' |
    grep -vE '/(libc|libm|libpthread|libdl|librt|ld-linux[^/]*)\.so|/usr/local/cuda' |
    while read -r lib; do cp -n "$lib" "$out/lib/" 2>/dev/null || true; done
done
du -sh "$out"
# One compressed file (the device tool carries at most 64 MiB): unpack there with
#   mkdir -p /tmp/hkv && tar xJf OUT/bundle.tar.xz -C /tmp/hkv
tar cJf "$out/bundle.tar.xz" -C "$out" bin lib
rm -rf "$out/bin" "$out/lib"
du -sh "$out/bundle.tar.xz"
