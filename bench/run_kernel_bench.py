#!/usr/bin/env python3
"""Runs bench/kernel_bench (hkv's kernels) and PyTorch on the same shapes, in one run, and
prints one table: Llama-3-8B attention (32 q heads, 8 kv heads, head_dim 128, bf16).

  python3 bench/run_kernel_bench.py --bin build/bin/kernel_bench \
      --scores ../shared/headkv_scores/Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json

Rows: decode with uniform lengths vs torch SDPA (enable_gqa) on dense K/V, decode with HeadKV
per-head lengths (R2 scores, kv-head granularity, B = 128 and 1024, plus decoded tokens),
causal prefill vs SDPA's flash backend, and selection's share of prefill at 32k.
Bandwidth = bytes of K/V read / time; prefill TFLOP/s counts the causal half (4*d*H*n(n+1)/2).
"""
import argparse
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile

import torch
import torch.nn.functional as F

HQ, HKV, D, L, W = 32, 8, 128, 32, 8
DECODED = 64  # decoded tokens on top of the compressed prompt, HeadKV rows
BETA = 1.01


def median_ms(fn, warmup=5, reps=50):
    for _ in range(warmup):
        fn()
    torch.cuda.synchronize()
    times = []
    for _ in range(reps):
        a = torch.cuda.Event(enable_timing=True)
        b = torch.cuda.Event(enable_timing=True)
        a.record()
        fn()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    return statistics.median(times)


def ours(binary, *args):
    out = subprocess.run([binary, *map(str, args)], check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def torch_decode(batch, ctx):
    q = torch.randn(batch, HQ, 1, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(batch, HKV, ctx, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    ms = median_ms(lambda: F.scaled_dot_product_attention(q, k, v, enable_gqa=True))
    del q, k, v
    torch.cuda.empty_cache()
    return ms


def torch_prefill(n):
    q = torch.randn(1, HQ, n, D, device="cuda", dtype=torch.bfloat16)
    k = torch.randn(1, HKV, n, D, device="cuda", dtype=torch.bfloat16)
    v = torch.randn_like(k)
    from torch.nn.attention import SDPBackend, sdpa_kernel
    note = "flash, enable_gqa"
    try:
        with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
            fn = lambda: F.scaled_dot_product_attention(q, k, v, is_causal=True, enable_gqa=True)
            fn()
    except RuntimeError:
        ke = k.repeat_interleave(HQ // HKV, dim=1)
        ve = v.repeat_interleave(HQ // HKV, dim=1)
        note = "flash, K/V expanded"
        fn = lambda: F.scaled_dot_product_attention(q, ke, ve, is_causal=True)
    with sdpa_kernel(SDPBackend.FLASH_ATTENTION):
        ms = median_ms(fn, warmup=2, reps=10)
    torch.cuda.empty_cache()
    return ms, note


def headkv_caps(path, budget):
    """Per (layer, kv_head) caps: round_half_even(score * pool + floor), HeadKV's formula."""
    with open(path) as f:
        raw = json.load(f)
    imp = {}
    for key, vals in raw.items():
        layer, head = map(int, key.split("-"))
        imp[(layer, head)] = sum(vals) / len(vals) if vals else 0.0
    total = sum(imp.values())
    group = HQ // HKV
    b = budget - W
    floor = b - math.floor(b / BETA)
    pool = math.floor(b / BETA) * L * HKV
    caps = []
    for layer in range(L):
        row = []
        for h in range(HKV):
            s = sum(imp[(layer, h * group + g)] for g in range(group)) / total
            row.append(round(s * pool + floor))  # Python's round: half to even
        caps.append(row)
    return caps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--bin", required=True)
    ap.add_argument("--scores", required=True)
    ap.add_argument("--json-out", default="")
    args = ap.parse_args()
    props = torch.cuda.get_device_properties(0)
    rows = []
    print(f"# GPU: {props.name}, torch {torch.__version__}", flush=True)

    uniform = []
    for batch, ctx in [(1, 131072), (16, 4096), (64, 4096), (16, 32768)]:
        r = ours(args.bin, "decode", batch, ctx)
        t_ms = torch_decode(batch, ctx)
        t_bw = r["bytes"] / t_ms / 1e9
        uniform.append(r["tbps"])
        rows.append(("decode uniform", f"{batch}x{ctx}", f"{r['ms']:.3f}", f"{r['tbps']:.2f} TB/s",
                     f"{t_ms:.3f}", f"{t_bw:.2f} TB/s", f"{r['tbps'] / t_bw:.2f}"))
        print(rows[-1], flush=True)
    uni_bw = statistics.mean(uniform)

    for budget in (128, 1024):
        caps = headkv_caps(args.scores, budget)
        for batch in (1, 8, 32, 128, 256):
            lens = []
            for s in range(batch):
                lens += [c + W + DECODED for c in caps[s % L]]
            with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as f:
                f.write("\n".join(map(str, lens)))
                name = f.name
            r = ours(args.bin, "decode_lens", name)
            os.unlink(name)
            rows.append((f"decode HeadKV B={budget}", f"batch {batch} (len {min(lens)}..{max(lens)})",
                         f"{r['ms']:.4f}", f"{r['tbps']:.2f} TB/s", "-", "-",
                         f"{r['tbps'] / uni_bw:.2f} of uniform"))
            print(rows[-1], flush=True)

    prefill_ms = {}
    for n in (4096, 16384, 32768):
        r = ours(args.bin, "prefill", n)
        t_ms, note = torch_prefill(n)
        flops = 4.0 * D * HQ * n * (n + 1) / 2
        t_tf = flops / t_ms / 1e9
        prefill_ms[n] = (r["ms"], t_ms)
        rows.append(("prefill causal", f"{n} tokens", f"{r['ms']:.3f}", f"{r['tflops']:.0f} TFLOP/s",
                     f"{t_ms:.3f}", f"{t_tf:.0f} TFLOP/s ({note})", f"{r['tflops'] / t_tf:.2f}"))
        print(rows[-1], flush=True)

    r = ours(args.bin, "select", 32768, 1016)
    ours_ms, torch_ms = prefill_ms[32768]
    rows.append(("selection (fused)", "32768 tokens, cap 1016", f"{r['ms']:.3f}",
                 f"{100 * r['ms'] / (r['ms'] + ours_ms):.1f}% of our prefill attn", "-",
                 f"{100 * r['ms'] / (r['ms'] + torch_ms):.1f}% of torch prefill attn", "-"))
    print(rows[-1], flush=True)

    head = ("row", "shape", "hkv ms", "hkv", "torch ms", "torch", "ratio")
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    fmt = "| " + " | ".join("{:<%d}" % w for w in widths) + " |"
    print()
    print(fmt.format(*head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(fmt.format(*r))
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    sys.exit(main())
