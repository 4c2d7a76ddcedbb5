#!/usr/bin/env python3
"""Runs bench/kernel_bench (hkv's kernels) and PyTorch on the same shapes, in one run, and
prints one table: Llama-3-8B attention (32 q heads, 8 kv heads, head_dim 128, bf16).

  python3 bench/run_kernel_bench.py --bin build/bin/kernel_bench \
      --scores ../shared/headkv_scores/Meta-Llama-3-8B-Instruct_retrieval_reasoning_heads.json

Rows: decode with uniform lengths vs torch SDPA (enable_gqa) on dense K/V, decode with HeadKV
per-head lengths (R2 scores, kv-head granularity, B = 128 and 1024, plus decoded tokens),
causal prefill vs SDPA's flash backend (the engine's default kernel, then the wgmma kernel,
its serial schedule and the mma.sync kernel forced), and selection's share of prefill at 32k.
`--only prefill` runs just the prefill and selection rows, `--only decode` just the decode rows;
`--decode-flags "..."` passes kernel_bench decode flags to every decode row (e.g. the best
variant of a sweep: "--kernel single_launch --variant w4u4 --min-split 64").
Bandwidth = bytes of K/V read / time; prefill TFLOP/s counts the causal half (4*d*H*n(n+1)/2).

  python3 bench/run_kernel_bench.py --bin build/bin/kernel_bench --scores ... --sweep [--dry-run]

--sweep: decode only. On the four uniform shapes and HeadKV B=128 at batch 1/8/32/128, the
engine's kernel (decode_attention.h) and the single-launch kernel's variants
(single_launch_decode_attention.h: --variant, --ctas-per-sm, --min-split, --items-per-cta,
--device-plan of kernel_bench), then a table of every run and one of the best flags per shape.
--dry-run prints the sweep's kernel_bench command lines (writing the HeadKV length files to a
kept temporary directory) and runs nothing; it needs neither a GPU nor PyTorch.
"""
import argparse
import json
import math
import os
import shlex
import statistics
import subprocess
import sys
import tempfile

torch = None  # imported by load_torch(): --help and --dry-run work without PyTorch
F = None

HQ, HKV, D, L, W = 32, 8, 128, 32, 8
DECODED = 64  # decoded tokens on top of the compressed prompt, HeadKV rows
BETA = 1.01


def load_torch():
    global torch, F
    import torch as _torch
    import torch.nn.functional as _F
    torch, F = _torch, _F


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


def write_lens(directory, name, lens):
    path = os.path.join(directory, name)
    with open(path, "w") as f:
        f.write("\n".join(map(str, lens)) + "\n")
    return path


def ours_lens(binary, lens, flags=()):
    with tempfile.TemporaryDirectory() as d:
        return ours(binary, "decode_lens", write_lens(d, "lens.txt", lens), *flags)


def headkv_lens(caps, batch):
    """Row lengths (seq, kv_head) of a HeadKV batch: sequence s uses layer s mod 32's caps."""
    lens = []
    for s in range(batch):
        lens += [c + W + DECODED for c in caps[s % L]]
    return lens


def print_table(head, rows):
    widths = [max(len(str(x[i])) for x in rows + [head]) for i in range(len(head))]
    fmt = "| " + " | ".join("{:<%d}" % w for w in widths) + " |"
    print()
    print(fmt.format(*head))
    print("|" + "|".join("-" * (w + 2) for w in widths) + "|")
    for r in rows:
        print(fmt.format(*map(str, r)))


UNIFORM = [(1, 131072), (16, 4096), (64, 4096), (16, 32768)]
SINGLE_LAUNCH = ["--kernel", "single_launch"]
# The single-launch kernel's variants (kernels/single_launch_decode_*.cu): w = warps per CTA
# (4: 128 threads, 8: 256), u = 16-byte K/V loads in flight per lane, p = prefetch.
VARIANTS = ["w4u4", "w4u4p", "w4u8", "w8u4", "w8u4p", "w8u8"]
SWEEP_BATCHES = (1, 8, 32, 128)  # HeadKV B=128


def sweep_runs(args, lens_dir):
    """The sweep's runs, (shape, decode flags, kernel_bench arguments), in order. Writes the
    HeadKV length files into lens_dir."""
    runs = []
    for batch, ctx in UNIFORM:
        shape = f"uniform {batch}x{ctx}"
        base = ["decode", batch, ctx]
        runs.append((shape, [], base))  # the engine's kernel: the baseline
        for variant in VARIANTS:
            for cps in ((2, 4) if variant.startswith("w4") else (2,)):
                flags = SINGLE_LAUNCH + ["--variant", variant, "--ctas-per-sm", cps]
                runs.append((shape, flags, base + flags))
    caps = headkv_caps(args.scores, 128)
    for batch in SWEEP_BATCHES:
        shape = f"HeadKV B=128 batch {batch}"
        base = ["decode_lens", write_lens(lens_dir, f"headkv128_b{batch}.txt",
                                          headkv_lens(caps, batch))]
        runs.append((shape, [], base))
        for variant in VARIANTS:
            # Latency-bound batches try shorter splits; larger ones one item per CTA.
            for min_split in ((64, 128) if batch < 32 else (128,)):
                for items in ((0, 1) if batch >= 32 else (0,)):
                    flags = SINGLE_LAUNCH + ["--variant", variant, "--min-split", min_split,
                                             "--items-per-cta", items]
                    runs.append((shape, flags, base + flags))
        flags = SINGLE_LAUNCH + ["--device-plan"]
        runs.append((shape, flags, base + flags))
    return runs


def flags_text(flags):
    return " ".join(map(str, flags)) if flags else "(decode_attention)"


def sweep(args):
    """Every decode variant on the uniform and HeadKV (B=128) shapes, about a second a run."""
    keep = tempfile.mkdtemp(prefix="hkv_sweep_lens_") if args.dry_run else None
    with tempfile.TemporaryDirectory() as tmp:
        planned = sweep_runs(args, keep or tmp)
        if args.dry_run:
            print(f"# {len(planned)} runs; HeadKV length files in {keep} (kept)")
            for _, _, argv in planned:
                print(shlex.join([args.bin, *map(str, argv)]))
            return 0
        load_torch()
        props = torch.cuda.get_device_properties(0)
        print(f"# GPU: {props.name}, torch {torch.__version__}, {len(planned)} runs", flush=True)
        torch_ms = {f"uniform {b}x{c}": torch_decode(b, c) for b, c in UNIFORM}
        runs = []  # (shape, flags, result)
        for shape, flags, argv in planned:
            try:
                r = ours(args.bin, *argv)
            except subprocess.CalledProcessError as e:
                print(shape, flags_text(flags), "failed:", e.stderr.strip(), flush=True)
                continue
            runs.append((shape, flags, r))
            print(shape, flags_text(flags), f"{r['ms'] * 1000:.1f} us",
                  f"{r['ms_chain'] * 1000:.1f} us chained", f"{r['tbps']:.2f} TB/s", flush=True)
    base = {shape: r for shape, flags, r in runs if not flags}

    def vs(shape, r):
        ref = [f"{base[shape]['ms'] / r['ms']:.2f}x" if shape in base else "-"]
        if shape in torch_ms:
            ref.append(f"{r['tbps'] / (r['bytes'] / torch_ms[shape] / 1e9):.2f}x torch")
        return ", ".join(ref)

    rows = [(shape, flags_text(flags), f"{r['ms'] * 1000:.1f}", f"{r['ms_chain'] * 1000:.1f}",
             f"{r['tbps']:.2f}", r["work_items"], r.get("ctas", "-"), r["chunk"], vs(shape, r))
            for shape, flags, r in runs]
    print_table(("shape", "flags", "us", "chained us", "TB/s", "items", "ctas", "chunk",
                 "speed-up vs decode_attention"), rows)
    best = {}
    for shape, flags, r in runs:
        if flags and (shape not in best or r["ms"] < best[shape][1]["ms"]):
            best[shape] = (flags, r)
    rows = [(shape, flags_text(f), f"{r['ms'] * 1000:.1f}", f"{r['ms_chain'] * 1000:.1f}",
             f"{r['tbps']:.2f}", vs(shape, r)) for shape, (f, r) in best.items()]
    print_table(("shape", "best single-launch flags", "us", "chained us", "TB/s",
                 "speed-up vs decode_attention"), rows)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump([(s, list(map(str, fl)), r) for s, fl, r in runs], f, indent=1)
    return 0


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
    ap = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="See the module docstring and bench/README.md for the rows and the sweep.")
    ap.add_argument("--bin", required=True, help="path of kernel_bench")
    ap.add_argument("--scores", default="", help="HeadKV score file (decode HeadKV rows, sweep)")
    ap.add_argument("--json-out", default="")
    ap.add_argument("--only", choices=["all", "prefill", "decode"], default="all")
    ap.add_argument("--decode-flags", default="",
                    help="kernel_bench decode flags for every decode row of the main table")
    ap.add_argument("--sweep", action="store_true",
                    help="decode kernel variants only: every run, then the best flags per shape")
    ap.add_argument("--dry-run", action="store_true",
                    help="with --sweep: print the kernel_bench command lines, run nothing")
    args = ap.parse_args()
    if args.dry_run and not args.sweep:
        ap.error("--dry-run lists the commands of --sweep; give --sweep too")
    if (args.sweep or args.only != "prefill") and not args.scores:
        ap.error("--scores is needed for the HeadKV decode rows (or --only prefill)")
    if args.sweep:
        return sweep(args)
    load_torch()
    props = torch.cuda.get_device_properties(0)
    rows = []
    print(f"# GPU: {props.name}, torch {torch.__version__}", flush=True)
    dflags = shlex.split(args.decode_flags)
    if dflags:
        print(f"# decode flags: {shlex.join(dflags)}", flush=True)

    uniform = []
    for batch, ctx in [] if args.only == "prefill" else UNIFORM:
        r = ours(args.bin, "decode", batch, ctx, *dflags)
        t_ms = torch_decode(batch, ctx)
        t_bw = r["bytes"] / t_ms / 1e9
        uniform.append(r["tbps"])
        rows.append(("decode uniform", f"{batch}x{ctx}", f"{r['ms']:.3f}", f"{r['tbps']:.2f} TB/s",
                     f"{t_ms:.3f}", f"{t_bw:.2f} TB/s", f"{r['tbps'] / t_bw:.2f}"))
        print(rows[-1], flush=True)
    uni_bw = statistics.mean(uniform) if uniform else 0.0

    for budget in () if args.only == "prefill" else (128, 1024):
        caps = headkv_caps(args.scores, budget)
        for batch in (1, 8, 32, 128, 256):
            lens = headkv_lens(caps, batch)
            r = ours_lens(args.bin, lens, dflags)
            rows.append((f"decode HeadKV B={budget}", f"batch {batch} (len {min(lens)}..{max(lens)})",
                         f"{r['ms']:.4f}", f"{r['tbps']:.2f} TB/s", "-", "-",
                         f"{r['tbps'] / uni_bw:.2f} of uniform, "
                         f"{r['ms_chain'] * 1000:.1f} us chained"))
            print(rows[-1], flush=True)

    if args.only == "decode":
        finish(args, rows)
        return 0

    prefill_ms = {}
    for n in (4096, 16384, 32768):
        t_ms, note = torch_prefill(n)
        flops = 4.0 * D * HQ * n * (n + 1) / 2
        t_tf = flops / t_ms / 1e9
        # auto = what the engine runs (wgmma on sm_90); then each kernel forced.
        for kernel in ("auto", "wgmma", "wgmma_serial", "mma"):
            try:
                r = ours(args.bin, "prefill", n, kernel)
            except subprocess.CalledProcessError as e:  # wgmma on a GPU without sm_90a
                print(f"prefill {n} {kernel}: {e.stderr.strip()}", flush=True)
                continue
            if kernel == "auto":
                prefill_ms[n] = (r["ms"], t_ms)
            label = {"auto": "prefill causal", "wgmma": "prefill (wgmma)",
                     "wgmma_serial": "prefill (wgmma serial)",
                     "mma": "prefill (mma.sync)"}[kernel]
            rows.append((label, f"{n} tokens", f"{r['ms']:.3f}", f"{r['tflops']:.0f} TFLOP/s",
                         f"{t_ms:.3f}", f"{t_tf:.0f} TFLOP/s ({note})",
                         f"{r['tflops'] / t_tf:.2f}"))
            print(rows[-1], flush=True)

    r = ours(args.bin, "select", 32768, 1016)
    ours_ms, torch_ms = prefill_ms[32768]
    rows.append(("selection (fused)", "32768 tokens, cap 1016", f"{r['ms']:.3f}",
                 f"{100 * r['ms'] / (r['ms'] + ours_ms):.1f}% of our prefill attn", "-",
                 f"{100 * r['ms'] / (r['ms'] + torch_ms):.1f}% of torch prefill attn", "-"))
    print(rows[-1], flush=True)

    finish(args, rows)
    return 0


def finish(args, rows):
    print_table(("row", "shape", "hkv ms", "hkv", "torch ms", "torch", "ratio"), rows)
    if args.json_out:
        with open(args.json_out, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    try:
        sys.exit(main())
    except subprocess.CalledProcessError as e:
        sys.exit(f"kernel_bench failed: {shlex.join(e.cmd)}\n{e.stderr.strip()}")
