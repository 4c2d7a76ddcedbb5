#!/usr/bin/env python3
"""Writes the golden HeadKV scores and SnapKV kept sets that headkv_goldens_test checks hkv against.

For each fixture (the transformers checkpoints under tests/data/hf/ and the trained needle model in
tests/data/needle) it runs a few fixed inputs through a reference forward pass in fp32 and writes
OUT/<fixture>.json with:

* probes: HeadKV's scoring procedure written out plainly. Greedy decoding of the prompt, at most
  max_new_tokens steps, stopping after EOS (or a token whose text holds a newline: needle only).
  At every step (the first one is the last prompt token's), for each layer and query head, the
  attention row of the query over the prompt positions [0, n):
    r2 += (sum of the weights of the top-N positions that fall in the answer span) / N
    r  += 1 / N  when the top-1 position is in the span and the generated token equals the
                 prompt token there
  with N the span's length in tokens. These are the raw per-probe sums, before the acceptance
  test (random-weight models never answer right). Also recorded: the generated ids, the smallest
  greedy logit margin (top-1 minus top-2) and, per head, a tie slack: over the steps where the
  N-th and (N+1)-th weights (r2), or the first and second (r), are a near-tie (NEAR_TIE), the most
  the sum could move if another fp32 implementation ordered them the other way (the boundary
  weight / N; 1 / N). The test widens its tolerance for that head by the slack.
* selection: SnapKV's window scores as hkv documents them (headkv/selection.h): the attention of
  the last `window` prompt queries over the first n - window positions, averaged over the window
  queries and over the query heads of each KV head's GQA group, max-pooled with kernel
  `pool_kernel` (padding k/2, stride 1, edges clipped), then the top-`cap` positions (ties: the
  lower position) plus the window. Pooled scores and kept sets per (layer, KV head) for each cap.

Two references, the same JSON from either:

  --backend transformers  (default) the model class of transformers, eager attention,
                          output_attentions=True: the attention weights transformers computes
  --backend torch         a plain-torch Llama/Mistral/Qwen2 forward written from the weights in
                          this file (RMSNorm, RoPE incl. llama3 scaling, GQA, q/k/v biases, SwiGLU),
                          for machines without transformers (Debian's python3-torch)
  --backend both          transformers' files, plus the largest difference from the plain one

Inputs are fixed (seeded random ids for the random-weight fixtures, cuts of probes_score.jsonl
for the needle), so a rerun writes the same inputs; the numbers differ only by float rounding.
Runs on the CPU in well under a minute:

    python3 tests/data/make_headkv_goldens.py OUT [--backend transformers|torch|both] [fixture...]

and then `cp OUT/*.json tests/data/headkv_goldens/`.
"""
import argparse
import json
import math
import os
import random
import struct
import sys
import time

ROOT = os.path.dirname(os.path.abspath(__file__))
HF_FIXTURES = ["llama", "llama_hd64", "mistral", "qwen2"]
FIXTURES = HF_FIXTURES + ["needle"]
WINDOW, POOL_KERNEL, CAPS = 8, 7, [8, 32]
# Random-weight probes: (prompt length with BOS, answer span [begin, end)).
HF_PROBES = [(64, (10, 14)), (96, (40, 46)), (120, (90, 98))]
HF_SELECTION_LENGTHS = [100]
# Needle probes: probes_score.jsonl lines whose needle opens the document, cut after this many
# characters at a sentence end (as headkv_probe_runner_test's ShortProbe does).
NEEDLE_PROBES = [0, 5, 20]
NEEDLE_CUT_CHARS = 600
# Two attention weights closer than this fraction of the larger may be ordered either way by two
# fp32 implementations: their logits differ by ~1e-6 (summation order over <= 256 products, a
# few layers), which moves a weight by ~1e-6 of itself; 1e-5 leaves a 10x margin.
NEAR_TIE = 1e-5


def near_tie(a, b):
    return a - b < NEAR_TIE * a


def fixture_dir(name):
    return os.path.join(ROOT, "needle") if name == "needle" else os.path.join(ROOT, "hf", name)


# ----------------------------------------------------------------------------- plain torch model


def read_safetensors(torch, path):
    dtypes = {"F32": torch.float32, "BF16": torch.bfloat16, "F16": torch.float16}
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        a, b = h["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=dtypes[h["dtype"]])
        out[name] = t.reshape(h["shape"]).float()
    return out


def load_weights(torch, d):
    index = os.path.join(d, "model.safetensors.index.json")
    if not os.path.exists(index):
        return read_safetensors(torch, os.path.join(d, "model.safetensors"))
    with open(index) as f:
        files = sorted(set(json.load(f)["weight_map"].values()))
    w = {}
    for name in files:
        w.update(read_safetensors(torch, os.path.join(d, name)))
    return w


def rope_inv_freq(torch, cfg, head_dim):
    rp = cfg.get("rope_parameters") or cfg.get("rope_scaling") or {}
    theta = rp.get("rope_theta", cfg.get("rope_theta", 10000.0))
    inv = 1.0 / (theta ** (torch.arange(0, head_dim, 2, dtype=torch.float64) / head_dim))
    if rp.get("rope_type") == "llama3":  # transformers' _compute_llama3_parameters
        factor, lo, hi = rp["factor"], rp["low_freq_factor"], rp["high_freq_factor"]
        old = rp["original_max_position_embeddings"]
        lo_wl, hi_wl = old / lo, old / hi
        wl = 2 * math.pi / inv
        scaled = torch.where(wl > lo_wl, inv / factor, inv)
        smooth = (old / wl - lo) / (hi - lo)
        smoothed = (1 - smooth) * scaled / factor + smooth * scaled
        medium = ~(wl < hi_wl) & ~(wl > lo_wl)
        inv = torch.where(medium, smoothed, scaled)
    elif rp.get("rope_type", "default") != "default":
        raise SystemExit(f"rope_type {rp.get('rope_type')} not in the plain model")
    return inv.float()


class PlainModel:
    """HF Llama/Mistral/Qwen2 forward in fp32: logits at the last position and every layer's
    attention probabilities [Hq, T, T]."""

    def __init__(self, torch, d):
        with open(os.path.join(d, "config.json")) as f:
            self.cfg = cfg = json.load(f)
        self.torch = torch
        self.w = load_weights(torch, d)
        self.L = cfg["num_hidden_layers"]
        self.Hq, self.Hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
        self.D = cfg.get("head_dim") or cfg["hidden_size"] // self.Hq
        self.eps = cfg["rms_norm_eps"]
        self.inv_freq = rope_inv_freq(torch, cfg, self.D)

    def norm(self, x, g):
        t = self.torch
        return x * t.rsqrt(x.pow(2).mean(-1, keepdim=True) + self.eps) * g

    def rope(self, x, T):  # x [H, T, D], rotate_half layout (HF).
        t = self.torch
        ang = t.arange(T, dtype=t.float32)[:, None] * self.inv_freq[None, :]
        emb = t.cat([ang, ang], -1)
        cos, sin = emb.cos(), emb.sin()
        x1, x2 = x[..., : self.D // 2], x[..., self.D // 2:]
        return x * cos + t.cat([-x2, x1], -1) * sin

    def lin(self, x, name):
        y = x @ self.w[name + ".weight"].T
        b = self.w.get(name + ".bias")
        return y if b is None else y + b

    def __call__(self, ids):
        t = self.torch
        T = len(ids)
        x = self.w["model.embed_tokens.weight"][t.tensor(ids)]
        mask = t.full((T, T), float("-inf")).triu(1)
        atts = []
        for l in range(self.L):
            p = f"model.layers.{l}."
            h = self.norm(x, self.w[p + "input_layernorm.weight"])
            q = self.lin(h, p + "self_attn.q_proj").view(T, self.Hq, self.D).transpose(0, 1)
            k = self.lin(h, p + "self_attn.k_proj").view(T, self.Hkv, self.D).transpose(0, 1)
            v = self.lin(h, p + "self_attn.v_proj").view(T, self.Hkv, self.D).transpose(0, 1)
            q, k = self.rope(q, T), self.rope(k, T)
            g = self.Hq // self.Hkv
            k, v = k.repeat_interleave(g, 0), v.repeat_interleave(g, 0)
            a = t.softmax(q @ k.transpose(1, 2) / math.sqrt(self.D) + mask, -1)
            atts.append(a)
            o = (a @ v).transpose(0, 1).reshape(T, self.Hq * self.D)
            x = x + self.lin(o, p + "self_attn.o_proj")
            h = self.norm(x, self.w[p + "post_attention_layernorm.weight"])
            gate = t.nn.functional.silu(self.lin(h, p + "mlp.gate_proj"))
            m = gate * self.lin(h, p + "mlp.up_proj")
            x = x + self.lin(m, p + "mlp.down_proj")
        x = self.norm(x[-1], self.w["model.norm.weight"])
        head = self.w.get("lm_head.weight", self.w["model.embed_tokens.weight"])
        return x @ head.T, atts


class HfModel:
    """transformers' own model class, eager attention, fp32."""

    def __init__(self, torch, d):
        import transformers
        self.torch = torch
        try:
            self.m = transformers.AutoModelForCausalLM.from_pretrained(
                d, dtype=torch.float32, attn_implementation="eager")
        except TypeError:
            self.m = transformers.AutoModelForCausalLM.from_pretrained(
                d, torch_dtype=torch.float32, attn_implementation="eager")
        self.m.eval()

    def __call__(self, ids):
        t = self.torch
        with t.no_grad():
            out = self.m(t.tensor([ids]), output_attentions=True, use_cache=False)
        return out.logits[0, -1], [a[0] for a in out.attentions]


# ----------------------------------------------------------------------------- the formulas


def run_probe(torch, model, prompt, span, max_new, eos, has_newline):
    """HeadKV's R2 and R sums for one probe, greedy, full KV."""
    n = len(prompt)
    b, e = span
    N = e - b
    ids = list(prompt)
    out, margin = [], float("inf")
    r2 = r = slack_r2 = slack_r = None
    while len(out) < max_new:
        logits, atts = model(ids)
        top2 = torch.topk(logits.double(), 2).values
        margin = min(margin, float(top2[0] - top2[1]))
        nxt = int(torch.argmax(logits))
        if r2 is None:
            L, Hq = len(atts), atts[0].shape[0]  # Known after the first step.
            r2, r, slack_r2, slack_r = ([0.0] * (L * Hq) for _ in range(4))
        for l, a in enumerate(atts):
            rows = a[:, -1, :n].double()  # [Hq, n]: the newest query over the prompt.
            for h in range(rows.shape[0]):
                k = min(N + 1, n)
                vals, pos = torch.topk(rows[h], k)
                i = l * rows.shape[0] + h
                r2[i] += sum(float(vals[j]) for j in range(min(N, n)) if b <= int(pos[j]) < e) / N
                if b <= int(pos[0]) < e and prompt[int(pos[0])] == nxt:
                    r[i] += 1.0 / N
                # Near-ties: fp32 rounding may order these two positions either way, which can
                # move the sum by the boundary weight / N (r2) or by 1 / N (r).
                if k > N and near_tie(float(vals[N - 1]), float(vals[N])):
                    slack_r2[i] += float(vals[N - 1]) / N
                if k > 1 and near_tie(float(vals[0]), float(vals[1])):
                    slack_r[i] += 1.0 / N
        out.append(nxt)
        ids.append(nxt)
        if nxt in eos or has_newline(ids[-2], nxt):
            break
    return {"output_ids": out, "min_logit_margin": margin, "r2": r2, "r": r,
            "tie_slack_r2": slack_r2, "tie_slack_r": slack_r}


def window_selection(torch, model, prompt, hkv):
    """SnapKV pooled window scores [L][Hkv][n - w] and kept sets per cap (headkv/selection.h)."""
    n, w = len(prompt), WINDOW
    _, atts = model(prompt)
    g = atts[0].shape[0] // hkv
    scores, kept = [], {str(c): [] for c in CAPS}
    for a in atts:
        win = a[:, n - w:, : n - w].double().mean(1)  # [Hq, n - w]
        grp = win.view(hkv, g, n - w).mean(1)  # [Hkv, n - w]
        pooled = torch.nn.functional.max_pool1d(grp[:, None, :], POOL_KERNEL, 1,
                                                POOL_KERNEL // 2)[:, 0, :]
        scores.append([[float(x) for x in pooled[h]] for h in range(hkv)])
        for c in CAPS:
            layer = []
            for h in range(hkv):
                s = [float(x) for x in pooled[h]]
                order = sorted(range(n - w), key=lambda j: (-s[j], j))[: min(c, n - w)]
                layer.append(sorted(order) + list(range(n - w, n)))
            kept[str(c)].append(layer)
    return {"window": w, "pool_kernel": POOL_KERNEL, "caps": CAPS, "scores": scores, "kept": kept}


# ----------------------------------------------------------------------------- inputs


def hf_inputs(cfg, seed):
    rng = random.Random(seed)
    bos, V = cfg["bos_token_id"], cfg["vocab_size"]
    probes = []
    for i, (n, span) in enumerate(HF_PROBES):
        ids = [bos] + [rng.randrange(3, V) for _ in range(n - 1)]
        probes.append({"id": f"random-{i}", "prompt_ids": ids, "span": list(span),
                       "max_new_tokens": span[1] - span[0]})
    sel = [[bos] + [rng.randrange(3, V) for _ in range(n - 1)] for n in HF_SELECTION_LENGTHS]
    return probes, sel


def needle_inputs():
    sys.path.insert(0, ROOT)
    import make_needle_model as mnm
    tok = mnm.Tok(fixture_dir("needle"))
    with open(os.path.join(fixture_dir("needle"), "probes_score.jsonl")) as f:
        recs = [json.loads(line) for line in f if line.strip()]
    probes = []
    for i in NEEDLE_PROBES:
        j = recs[i]
        cut = j["prompt"].rfind(". ", 0, NEEDLE_CUT_CHARS + 2) + 1
        text = j["prompt"][:cut] + " " + j["question"]
        b, e = j["answer_char_span"]
        assert e < cut, j["id"]
        ids = tok.encode(text, bos=True)
        # Token byte offsets (BOS stands for no bytes); the span is every token overlapping
        # [b, e), as hkv's PrepareProbe maps it.
        starts, at = [], 0
        for t in ids:
            starts.append(at)
            if t not in tok.special:
                at += len(bytes(tok.u2b[c] for c in tok.inv[t]))
        ends = starts[1:] + [at]
        assert tok.decode(ids) == text
        first = next(k for k in range(len(ids)) if ends[k] > b)
        last = max(k for k in range(len(ids)) if starts[k] < e)
        n_answer = len(tok.encode(" " + j["answer"], bos=False))
        probes.append({"id": j["id"] + "-short", "prompt": text[:cut], "question": j["question"],
                       "answer": j["answer"], "answer_char_span": [b, e], "prompt_ids": ids,
                       "span": [first, last + 1], "max_new_tokens": max(1, n_answer)})

    def has_newline(prev, t):
        return t not in tok.special and "\n" in tok.decode([t])

    return probes, [probes[0]["prompt_ids"]], [tok.eos], has_newline


def versions(torch, backend):
    v = {"torch": torch.__version__, "backend": backend}
    if backend != "torch":
        import transformers
        v["transformers"] = transformers.__version__
    return v


def make(torch, name, backend):
    d = fixture_dir(name)
    with open(os.path.join(d, "config.json")) as f:
        cfg = json.load(f)
    if name == "needle":
        probes, sel, eos, has_newline = needle_inputs()
    else:
        probes, sel = hf_inputs(cfg, seed=FIXTURES.index(name) + 1)
        eos = cfg["eos_token_id"]
        eos = eos if isinstance(eos, list) else [eos]
        has_newline = lambda prev, t: False  # No tokenizer: ids only.
    model = HfModel(torch, d) if backend == "transformers" else PlainModel(torch, d)
    for p in probes:
        p.update(run_probe(torch, model, p["prompt_ids"], p["span"], p["max_new_tokens"], eos,
                           has_newline))
    selection = []
    for i, ids in enumerate(sel):
        s = {"id": f"selection-{i}", "prompt_ids": ids}
        s.update(window_selection(torch, model, ids, cfg["num_key_value_heads"]))
        selection.append(s)
    root = os.path.dirname(os.path.dirname(ROOT))
    return {"fixture": name, "model_dir": os.path.relpath(d, root),
            "eos_ids": eos, "versions": versions(torch, backend), "probes": probes,
            "selection": selection}


def max_diff(a, b):
    """Largest |difference| of the r2/r sums and selection scores of two goldens."""
    m = 0.0
    for pa, pb in zip(a["probes"], b["probes"]):
        if pa["output_ids"] != pb["output_ids"]:
            return float("inf")
        for k in ("r2", "r"):
            m = max(m, max(abs(x - y) for x, y in zip(pa[k], pb[k])))
    for sa, sb in zip(a["selection"], b["selection"]):
        for la, lb in zip(sa["scores"], sb["scores"]):
            for ha, hb in zip(la, lb):
                m = max(m, max(abs(x - y) for x, y in zip(ha, hb)))
    return m


def summary(g):
    lines = []
    for p in g["probes"]:
        near_n = sum(1 for x in p["tie_slack_r2"] if x > 0)
        near_1 = sum(1 for x in p["tie_slack_r"] if x > 0)
        lines.append(f"  {p['id']:<28} n={len(p['prompt_ids']):<4} span={p['span']} "
                     f"out={p['output_ids']} margin={p['min_logit_margin']:.2e} "
                     f"sum r2={sum(p['r2']):.4f} r={sum(p['r']):.4f} "
                     f"heads with near-ties r2 {near_n} r {near_1}"
                     f" of {len(p['r2'])}")
    for s in g["selection"]:
        gaps = []
        for c in s["caps"]:
            for l, layer in enumerate(s["scores"]):
                for h, sc in enumerate(layer):
                    srt = sorted(sc, reverse=True)
                    # Equal values are one max-pooled peak (both sides break those ties by
                    # position); what may differ is two distinct values that are this close.
                    below = [x for x in srt[c:] if x != srt[c - 1]] if c < len(srt) else []
                    if below:
                        gaps.append(srt[c - 1] - below[0])
        lines.append(f"  {s['id']:<28} n={len(s['prompt_ids'])} caps={s['caps']} "
                     f"smallest gap at a cap's boundary {min(gaps):.2e}")
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("out")
    ap.add_argument("fixtures", nargs="*", default=FIXTURES)
    ap.add_argument("--backend", default="transformers", choices=["transformers", "torch", "both"])
    args = ap.parse_intermixed_args()
    import torch
    torch.set_num_threads(min(8, os.cpu_count() or 1))
    os.makedirs(args.out, exist_ok=True)
    start = time.time()
    for name in args.fixtures:
        t0 = time.time()
        primary = "transformers" if args.backend == "both" else args.backend
        g = make(torch, name, primary)
        if args.backend == "both":
            plain = make(torch, name, "torch")
            g["versions"]["max_abs_diff_vs_plain_torch"] = max_diff(g, plain)
        with open(os.path.join(args.out, name + ".json"), "w") as f:
            json.dump(g, f, separators=(",", ":"))
            f.write("\n")
        extra = ""
        if "max_abs_diff_vs_plain_torch" in g["versions"]:
            diff = g["versions"]["max_abs_diff_vs_plain_torch"]
            extra = f", max |transformers - plain torch| {diff:.2e}"
        print(f"{name}: {time.time() - t0:.1f} s ({primary}{extra})")
        print(summary(g))
    print(f"wrote {len(args.fixtures)} files to {args.out} in {time.time() - start:.1f} s")


if __name__ == "__main__":
    main()
