#!/usr/bin/env python3
"""Speed peer for hkv: Hugging Face transformers `generate` on one GPU, random bf16 weights.

Builds the model from a config.json alone (no checkpoint): AutoModelForCausalLM.from_config on
the GPU in bf16 with attn_implementation="sdpa", every weight re-drawn as N(0, 0.02) with a fixed
seed (norm weights 1.0), so logits are finite and greedy decoding is not degenerate. For each
batch size b it feeds b random prompts of --input-len tokens (ids in [1000, vocab-1000), explicit
all-ones attention mask) and generates exactly --output-len tokens greedily (no EOS stop).

  TTFT           wall time of one prefill-only forward over the batch (use_cache=True, logits of
                 the last position only; always a dynamic cache, whatever --cache says)
  generate       wall time of model.generate (its own prefill + output_len-1 decode steps)
  TPOT           (generate - TTFT) / (output_len - 1)
  output tok/s   b * output_len / generate;   decode tok/s = b * (output_len-1) / (generate - TTFT)
  peak GiB       torch.cuda.max_memory_allocated() during generate (weights included)

With --num-requests N > b, ceil(N/b) batches run back to back and the times are their means.
--cache static: generate(cache_implementation="static"); by default disable_compile=True where
transformers has it, so timings are eager like the dynamic rows (--allow-compile lets it compile
the decode step; compile time then lands in the measured run). bench/README.md quotes this
table as the transformers row beside hkv's own serving numbers (bench/gpu_serve_bench.sh), e.g.

  python3 bench/hf_peer_bench.py --config bench/configs/Meta-Llama-3-8B-Instruct \
      --input-len 32768 --output-len 256 --batch-sizes 1,4,8 --json-out /tmp/hf_peer.json

--dry-run prints the planned runs without importing torch or transformers.
"""
import argparse
import gc
import inspect
import json
import math
import os
import sys
import time
import traceback


def log(msg):
    print(f"[hf_peer] {msg}", file=sys.stderr, flush=True)


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--config", required=True, help="directory holding config.json")
    p.add_argument("--input-len", type=int, default=32768)
    p.add_argument("--output-len", type=int, default=256)
    p.add_argument("--batch-sizes", default="1,4,8", help="comma list, e.g. 1,4,8")
    p.add_argument("--num-requests", type=int, default=None, help="default: one batch per size")
    p.add_argument("--cache", choices=["dynamic", "static", "offloaded"], default="dynamic")
    p.add_argument("--json-out", default=None)
    p.add_argument("--warmup", action=argparse.BooleanOptionalAction, default=True,
                   help="tiny generate (8 prompt / 4 new tokens) before measuring")
    p.add_argument("--time-limit-s", type=float, default=240.0,
                   help="skip remaining batch sizes once this many seconds have passed")
    p.add_argument("--allow-compile", action="store_true", help="let static cache torch.compile")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--dry-run", action="store_true", help="print the plan; no torch needed")
    a = p.parse_args()
    a.batch_sizes = [int(x) for x in a.batch_sizes.split(",") if x.strip()]
    if a.output_len < 2 or a.input_len < 1 or not a.batch_sizes or min(a.batch_sizes) < 1:
        p.error("need --output-len >= 2, --input-len >= 1 and positive batch sizes")
    return a


def n_batches(a, b):
    return max(1, math.ceil((a.num_requests or b) / b))


def dry_run(a, cfg):
    head_dim = cfg.get("head_dim") or cfg["hidden_size"] // cfg["num_attention_heads"]
    kv_heads = cfg.get("num_key_value_heads", cfg["num_attention_heads"])
    per_tok = cfg["num_hidden_layers"] * 2 * kv_heads * head_dim * 2  # bf16 K and V
    print(f"dry run: {cfg.get('model_type')} vocab {cfg['vocab_size']}, cache {a.cache}, "
          f"warmup {a.warmup}, time limit {a.time_limit_s:.0f} s", flush=True)
    for b in a.batch_sizes:
        kv = b * (a.input_len + a.output_len) * per_tok / 2**30
        print(f"  batch {b}: {n_batches(a, b)} x generate([{b}, {a.input_len}] -> "
              f"+{a.output_len} tokens), KV cache ~{kv:.1f} GiB", flush=True)


def build_model(a):
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM
    config = AutoConfig.from_pretrained(a.config)
    need = a.input_len + a.output_len
    if getattr(config, "max_position_embeddings", need) < need:  # default RoPE: no effect on math
        log(f"max_position_embeddings {config.max_position_embeddings} -> {need}")
        config.max_position_embeddings = need
    model = None
    with torch.device("cuda"):
        for dtype_kw in ("torch_dtype", "dtype"):
            try:
                model = AutoModelForCausalLM.from_config(
                    config, attn_implementation="sdpa", **{dtype_kw: torch.bfloat16})
                break
            except TypeError as e:
                log(f"from_config({dtype_kw}=...) failed: {e}")
    if model is None:
        raise SystemExit("could not build the model from config")
    if next(model.parameters()).dtype != torch.bfloat16:
        model = model.to(torch.bfloat16)
    model.eval()
    torch.manual_seed(a.seed)
    with torch.no_grad():
        for name, prm in model.named_parameters():
            if prm.dim() == 1:
                prm.fill_(1.0 if "norm" in name else 0.0)
            else:
                prm.normal_(0.0, 0.02)
    gc_ = model.generation_config
    gc_.eos_token_id, gc_.pad_token_id = None, 0
    return model


def prefill_fn(model):
    """Prefill-only forward computing the last position's logits only, whatever the version."""
    params = inspect.signature(model.forward).parameters
    for kw in ("logits_to_keep", "num_logits_to_keep"):
        if kw in params:
            return lambda ids, mask: model(input_ids=ids, attention_mask=mask, use_cache=True,
                                           **{kw: 1}).logits
    base, head = model.get_decoder(), model.get_output_embeddings()
    return lambda ids, mask: head(base(input_ids=ids, attention_mask=mask,
                                       use_cache=True).last_hidden_state[:, -1:])


def gen_kwargs(a):
    from transformers import GenerationConfig
    kw = dict(max_new_tokens=a.output_len, min_new_tokens=a.output_len, do_sample=False,
              use_cache=True, pad_token_id=0, eos_token_id=None)
    if a.cache != "dynamic":
        kw["cache_implementation"] = a.cache
    if a.cache == "static" and not a.allow_compile and hasattr(GenerationConfig(), "disable_compile"):
        kw["disable_compile"] = True
    return kw


def main():
    t_start = time.perf_counter()
    a = parse_args()
    with open(os.path.join(a.config, "config.json")) as f:
        cfg = json.load(f)
    if a.dry_run:
        dry_run(a, cfg)
        return
    os.environ.setdefault("HF_HUB_OFFLINE", "1")  # config is local; the GPU box has no internet
    import torch
    import transformers

    def timed(fn):
        torch.cuda.synchronize()
        t0 = time.perf_counter()
        r = fn()
        torch.cuda.synchronize()
        return r, time.perf_counter() - t0

    peer = f"transformers {transformers.__version__} sdpa {a.cache}"
    log(f"{peer}, torch {torch.__version__}, {torch.cuda.get_device_name(0)}")
    model, load_s = timed(lambda: build_model(a))
    log(f"model built in {load_s:.1f} s, {torch.cuda.memory_allocated() / 2**30:.1f} GiB")
    prefill, kw = prefill_fn(model), gen_kwargs(a)
    vocab = cfg["vocab_size"]

    def prompts(b, n, seed):
        g = torch.Generator().manual_seed(seed)
        ids = torch.randint(1000, vocab - 1000, (b, n), generator=g).cuda()
        return ids, torch.ones_like(ids)

    with torch.no_grad():
        if a.warmup:
            ids, mask = prompts(1, 8, a.seed)
            prefill(ids, mask)
            model.generate(ids, attention_mask=mask, **{**kw, "max_new_tokens": 4,
                                                        "min_new_tokens": 4})
            log("warm-up done")
        rows = []
        for b in a.batch_sizes:
            row = dict(peer=peer, batch=b, input=a.input_len, output=a.output_len)
            rows.append(row)
            if time.perf_counter() - t_start > a.time_limit_s:
                log(f"time limit {a.time_limit_s:.0f} s passed: skipping batch {b}")
                print(f"skipped batch {b}: time limit {a.time_limit_s:.0f} s exceeded", flush=True)
                row["status"] = "skipped"
                continue
            status, ttfts, gens, peak = "ok", [], [], 0.0
            try:
                for i in range(n_batches(a, b)):
                    ids, mask = prompts(b, a.input_len, a.seed + 1 + 1000 * b + i)
                    _, ttft = timed(lambda: prefill(ids, mask))
                    gc.collect()
                    torch.cuda.empty_cache()
                    torch.cuda.reset_peak_memory_stats()
                    out, gen = timed(lambda: model.generate(ids, attention_mask=mask, **kw))
                    peak = max(peak, torch.cuda.max_memory_allocated() / 2**30)
                    new = out.shape[1] - a.input_len
                    if new != a.output_len:
                        log(f"batch {b}: generated {new} tokens, expected {a.output_len}")
                        status = f"generated {new}"
                    del out
                    ttfts.append(ttft)
                    gens.append(gen)
                    log(f"batch {b} run {i}: TTFT {ttft:.3f} s, generate {gen:.3f} s")
            except torch.cuda.OutOfMemoryError:
                status = "OOM"
            except Exception as e:  # keep the other batch sizes' rows
                traceback.print_exc()
                status = f"error: {type(e).__name__}"
            ids = mask = None
            gc.collect()
            torch.cuda.empty_cache()
            row["status"] = status
            if status == "OOM" or status.startswith("error"):
                log(f"batch {b}: {status}")
                continue
            ttft, gen = sum(ttfts) / len(ttfts), sum(gens) / len(gens)
            row.update(ttft_s=ttft, generate_s=gen, tpot_ms=1e3 * (gen - ttft) / (a.output_len - 1),
                       output_tok_s=b * a.output_len / gen,
                       decode_tok_s=b * (a.output_len - 1) / (gen - ttft), peak_gib=peak,
                       runs=len(gens))

    print("| peer | batch | input | output | TTFT s | TPOT ms | output tok/s | decode tok/s "
          "| peak GiB |", flush=True)
    print("|---|---|---|---|---|---|---|---|---|", flush=True)
    for r in rows:
        if "ttft_s" in r:
            cells = (f"{r['ttft_s']:.3f} | {r['tpot_ms']:.2f} | {r['output_tok_s']:.1f} | "
                     f"{r['decode_tok_s']:.1f} | {r['peak_gib']:.1f}")
        else:
            cells = " | ".join([r["status"]] * 5)
        print(f"| {r['peer']} | {r['batch']} | {r['input']} | {r['output']} | {cells} |",
              flush=True)
    result = dict(peer=peer, device=torch.cuda.get_device_name(0), torch=torch.__version__,
                  transformers=transformers.__version__, config=a.config, cache=a.cache,
                  rows=rows)
    print("JSON " + json.dumps(result), flush=True)
    if a.json_out:
        with open(a.json_out, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()
