#!/usr/bin/env python3
"""Makes tests/data/needle/: a small Llama trained to retrieve facts from long documents.

The fixture is "a model where heads matter": unlike random weights or stories260K it answers
needle-in-a-haystack questions at 4k context only by attending to the needle, so HeadKV's head
scores and the KV-compression quality table mean something on it. Everything is synthetic and
made from fixed seeds:

* Documents: English-like filler sentences drawn from word lists (the "haystack"), with facts
  ("needles") inserted at controlled depths. Three families of questions, every prompt ending in
  `Question: ... Answer:`:
    single  "The secret code of Theo is 318247."  ->  "What is the secret code of Theo?"
            (one target fact and 0-3 distractor facts about other people)
    fav     retrieval + reasoning, after HeadKV's "the favourite thing of the older one":
            "Theo is older than Mia. The favourite thing of Mia is blue kites. The favourite
            thing of Theo is red boats."  ->  "What is the favourite thing of the older one?"
    multi   several facts asked at once: "What are the secret codes of Theo, Mia and Sam?"
            -> "318247, 152390 and 290311"
* Tokenizer: byte-level BPE in Llama-3's style (the Llama-3 pre-tokenizer regex, GPT-2 byte
  alphabet, ignore_merges, <|begin_of_text|> / <|end_of_text|>), trained here on the word lists
  so that every word and name is one token and every 3-digit group 100-399 is one token.
* Model: LlamaForCausalLM, 6 layers, hidden 256, 8 query heads x head_dim 64, 2 KV heads (GQA),
  SwiGLU 64, tied embeddings, RoPE theta 1e5, 4096 positions, vocab 1536, 2.66M parameters,
  bf16 safetensors (5.3 MB). Variants A and B (4 and 5 layers) were trained beside it.
* Training (one H200, a few minutes; see README.md): answer-only loss; phase 1 at T=256 forms the
  copy ("induction") circuit on repeated random segments, compact key-value recall and dense
  question/answer documents; phase 2 lengthens to 512-2048; phase 3 trains at 1024-4096 on
  eval-like documents. Phases advance on accuracy gates or on time, LR warm-up, then constant,
  then a linear decay over the last 15% of the time budget.

Seeds: word lists, tokenizer, eval and probe prompts are fixed (a rerun writes the same files);
training batch s is a function of (variant seed, s, phase). The phase switches happen on gates
or time and are recorded in train_log.json, and GPU kernels are not bit-exact, so a rerun gives
a similar checkpoint, not the same bytes. `--init DIR --start-phase 4 [--fav-style older-one]`
fine-tunes a checkpoint on a fav-weighted mix (the attempt the README reports).

`--init DIR --start-phase 5` is the reasoning curriculum for `fav`, from a checkpoint that
already retrieves (stage 1: the phases 1-3 run of variant C); the committed fixture is its
output with --aux-weight 1.0 (0 and 0.3 left fav at chance, see the fixture's README). Its schedule runs on the fraction f of the time budget
(phase5_schedule): T=256 batches (80% until f = 0.5, then 50%) of fav blocks with the relation
first as in the eval prompts, each followed by one question: the name lookup alone ("Who is the
older one?" -> " Theo."), the second hop alone ("What is the favourite thing of Theo?"), or the
eval's question, before which a hint sentence ("Theo is the older one.") states the first hop,
with probability 1 - f / 0.45 (none after f = 0.45); 30% of the dense documents keep single,
multi, key-value and copy practice. The rest are long documents (512-2048 until f = 0.35, then
1024-4096; half fav, 30% of those with the relation and favourite sentences apart). An auxiliary
loss (--aux-weight, annealed to 0 between f = 0.7 and 0.85) pushes one head of layer >= 3
(--aux-head, auto: the one with the most attention on the two colour words) to attend, from
the position that predicts a fav answer, to the asked person's colour word. The eval and probe
prompts do not change. `--tiny` is a CPU smoke test of the same code path.

Stages (each writes into OUT, normally tests/data/needle):

    python3 tests/data/make_needle_model.py tokenizer OUT   # stdlib + regex: tokenizer files
    python3 tests/data/make_needle_model.py train OUT --variant C --seconds 370
        # torch (+ transformers, tokenizers for the cross-checks): trains, writes config.json,
        # model.safetensors, eval.jsonl (held-out prompts with their greedy answers),
        # probes_score.jsonl (needle probes for HeadKV scoring) and train_log.json
    python3 tests/data/make_needle_model.py data OUT        # eval.jsonl / probes without a model

Eval records: id, family, length (bucket), prompt (text, BOS not included), prompt_ids (BOS
first), question, answer, depth(s), and after training greedy (ids, text), correct, margin (the
smallest top-1 minus top-2 logit over the greedy steps). Probe records carry what HeadKV's R2
scoring needs: prompt, needle, real_needle, question, answer, depth, context length and the
character spans (and token spans) of the needle, the real needle and the answer value.
"""
import argparse
import json
import math
import os
import random
import struct
import sys
import time

# ----------------------------------------------------------------------------- word lists

NAMES = """Theo Mia Sam Ava Leo Ivy Max Zoe Eli Nora Finn Ruby Owen Lily Jack Emma Noah Anna Liam
Ella Adam Rosa Hugo Iris Omar Lena Ivan Maya Otto Nina Carl Dora Felix Greta Hans Ida Jonas Kira
Lars Mila Nils Olga Paul Rita Sven Tara Uma Vera Walt Yara Zack Amir Beth Cole Dean Erin Fay Gus
Joel Kate Luke Nell Opal Pete Quinn Rex Sara Tom Una Vic Wade Xena Yuri Abel Bea Cody Dale Fred
Gail Hank Jade Kurt Lois Milo Ned Ora Seth Ted Uri Wren Yves Arlo Bram Cleo Dirk Edda Gwen Ines
Juno""".split()
ADJ = """quiet old small bright dark warm cold tall narrow wide gentle heavy soft empty busy distant
hidden ancient simple rough smooth pale deep little long strange calm wild sleepy dusty lonely
happy sudden late open broken wooden sandy stormy sunny misty crowded humble patient clever tired
green silver golden""".split()
NOUNS = """river mill forest village road garden window house bridge hill field market cat dog
horse bird tree lake stone wind rain cloud morning evening night farmer teacher child sailor
baker king queen tower castle valley path letter story song door wall fire bell ship island
harbor street city station clock table chair book painter doctor mountain meadow orchard fence
barn well kitchen library school church shop crowd fisherman shepherd traveler stranger neighbor
winter summer autumn""".split()
VERBS = """rested waited wandered stood walked slept looked listened turned stopped appeared
vanished remained shone moved sang danced worked gathered drifted passed returned arrived
lingered trembled glowed fell rose rolled climbed watched followed crossed visited painted
carried found opened closed reached""".split()
PREPS = "near beside behind under above across along past around inside outside beyond toward through over".split()
ADVS = """slowly quietly softly gently often again together alone carefully quickly silently
sometimes later suddenly happily patiently early once nearly always""".split()
COLORS = "red blue yellow purple orange pink white black brown grey violet crimson".split()
THINGS = """kites apples boats books candles drums flowers gloves hats jars kittens lamps maps
marbles mittens oranges pears pencils puzzles ribbons rockets scarves shells socks stamps stones
trains tulips violins whistles""".split()
TEMPLATE_WORDS = """The A the a Every and In One with secret code codes of is are What Question
Answer favourite thing older younger than one""".split()
CHUNKS = [str(c) for c in range(100, 400)]  # 3-digit groups of the codes: one token each.

BOS, EOS, PAD = "<|begin_of_text|>", "<|end_of_text|>", "<|pad|>"
PAT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+"
       r"[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
VOCAB_MULTIPLE = 64
MAX_POS = 4096

# ----------------------------------------------------------------------------- tokenizer


def bytes_to_unicode():
    """GPT-2's byte -> printable character table (ByteLevel pre-tokenizer)."""
    bs = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("\xa1"), ord("\xac") + 1)) +
          list(range(ord("\xae"), ord("\xff") + 1)))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, [chr(c) for c in cs])), bs


def pretoken_corpus():
    """Every pre-token the documents use, with a weight (order of merges only)."""
    words = {}
    for w in NAMES + ADJ + NOUNS + VERBS + PREPS + ADVS + COLORS + THINGS + TEMPLATE_WORDS:
        words[" " + w] = words.get(" " + w, 0) + 10
    for c in CHUNKS:
        words[c] = 3
    for p in [".", ",", "?", ":", " "]:
        words[p] = 1
    return words


def train_bpe():
    """Plain BPE over the pre-token set until every pre-token is one symbol (deterministic)."""
    b2u, order = bytes_to_unicode()
    corpus = pretoken_corpus()
    words = [[b2u[b] for b in w.encode("utf-8")] for w in sorted(corpus)]
    counts = [corpus[w] for w in sorted(corpus)]
    merges = []
    while True:
        pairs = {}
        for sym, c in zip(words, counts):
            for a, b in zip(sym, sym[1:]):
                pairs[(a, b)] = pairs.get((a, b), 0) + c
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        merges.append(best)
        joined = best[0] + best[1]
        for i, sym in enumerate(words):
            if len(sym) < 2:
                continue
            out, j = [], 0
            while j < len(sym):
                if j + 1 < len(sym) and sym[j] == best[0] and sym[j + 1] == best[1]:
                    out.append(joined)
                    j += 2
                else:
                    out.append(sym[j])
                    j += 1
            words[i] = out
    vocab = {}
    for b in order:
        vocab[b2u[b]] = len(vocab)
    for a, b in merges:
        if a + b not in vocab:
            vocab[a + b] = len(vocab)
    specials = [BOS, EOS, PAD]
    n = len(vocab) + len(specials)
    total = (n + VOCAB_MULTIPLE - 1) // VOCAB_MULTIPLE * VOCAB_MULTIPLE
    specials += ["<|reserved_special_token_%d|>" % i for i in range(total - n)]
    added = {s: len(vocab) + i for i, s in enumerate(specials)}
    return vocab, merges, added


def write_tokenizer(out):
    vocab, merges, added = train_bpe()
    bos, eos = added[BOS], added[EOS]
    tok = {
        "version": "1.0", "truncation": None, "padding": None,
        "added_tokens": [{"id": i, "content": s, "single_word": False, "lstrip": False,
                          "rstrip": False, "normalized": False, "special": True}
                         for s, i in added.items()],
        "normalizer": None,
        "pre_tokenizer": {"type": "Sequence", "pretokenizers": [
            {"type": "Split", "pattern": {"Regex": PAT}, "behavior": "Isolated", "invert": False},
            {"type": "ByteLevel", "add_prefix_space": False, "trim_offsets": True,
             "use_regex": False}]},
        "post_processor": {"type": "Sequence", "processors": [
            {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": False,
             "use_regex": True},
            {"type": "TemplateProcessing",
             "single": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                        {"Sequence": {"id": "A", "type_id": 0}}],
             "pair": [{"SpecialToken": {"id": BOS, "type_id": 0}},
                      {"Sequence": {"id": "A", "type_id": 0}},
                      {"SpecialToken": {"id": BOS, "type_id": 1}},
                      {"Sequence": {"id": "B", "type_id": 1}}],
             "special_tokens": {BOS: {"id": BOS, "ids": [bos], "tokens": [BOS]}}}]},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True, "trim_offsets": True,
                    "use_regex": True},
        "model": {"type": "BPE", "dropout": None, "unk_token": None,
                  "continuing_subword_prefix": None, "end_of_word_suffix": None,
                  "fuse_unk": False, "byte_fallback": False, "ignore_merges": True,
                  "vocab": vocab, "merges": [[a, b] for a, b in merges]},
    }
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "tokenizer.json"), "w", encoding="utf-8") as f:
        json.dump(tok, f, ensure_ascii=False, indent=1)
        f.write("\n")
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"add_bos_token": True, "add_eos_token": False, "bos_token": BOS,
                   "eos_token": EOS, "pad_token": PAD, "clean_up_tokenization_spaces": False,
                   "model_max_length": MAX_POS, "tokenizer_class": "PreTrainedTokenizerFast"},
                  f, indent=2)
        f.write("\n")
    with open(os.path.join(out, "generation_config.json"), "w") as f:
        json.dump({"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": added[PAD],
                   "do_sample": False}, f, indent=2)
        f.write("\n")
    print("tokenizer: %d base+merges, %d added, vocab %d" % (len(vocab), len(added),
                                                           len(vocab) + len(added)))


class Tok:
    """The byte-level BPE encoder/decoder of tokenizer.json (pure Python, cached)."""

    def __init__(self, out):
        with open(os.path.join(out, "tokenizer.json"), encoding="utf-8") as f:
            t = json.load(f)
        self.vocab = dict(t["model"]["vocab"])
        for a in t["added_tokens"]:
            self.vocab[a["content"]] = a["id"]
        self.ranks = {tuple(m): i for i, m in enumerate(t["model"]["merges"])}
        self.inv = {i: s for s, i in self.vocab.items()}
        self.b2u, _ = bytes_to_unicode()
        self.u2b = {u: b for b, u in self.b2u.items()}
        self.bos, self.eos, self.pad = self.vocab[BOS], self.vocab[EOS], self.vocab[PAD]
        self.size = len(self.vocab)
        self.cache = {}
        self.special = {a["id"] for a in t["added_tokens"]}

    def piece(self, p):
        """Ids of one pre-token."""
        hit = self.cache.get(p)
        if hit is not None:
            return hit
        mapped = "".join(self.b2u[b] for b in p.encode("utf-8"))
        if mapped in self.vocab:  # ignore_merges
            ids = [self.vocab[mapped]]
        else:
            sym = list(mapped)
            while len(sym) > 1:
                best, at = None, -1
                for i in range(len(sym) - 1):
                    r = self.ranks.get((sym[i], sym[i + 1]))
                    if r is not None and (best is None or r < best):
                        best, at = r, i
                if best is None:
                    break
                sym[at:at + 2] = [sym[at] + sym[at + 1]]
            ids = [self.vocab[s] for s in sym]
        self.cache[p] = ids
        return ids

    def encode(self, text, bos=True):
        import regex
        ids = [self.bos] if bos else []
        for m in regex.finditer(PAT, text):
            ids += self.piece(m.group(0))
        return ids

    def pieces_ids(self, pieces):
        out = []
        for p in pieces:
            out += self.piece(p)
        return out

    def decode(self, ids):
        bs = bytearray()
        for i in ids:
            if i in self.special:
                continue
            bs += bytes(self.u2b[c] for c in self.inv[i])
        return bs.decode("utf-8", errors="replace")


# ----------------------------------------------------------------------------- documents
# A document is a list of "pieces", each exactly one pre-token of the Llama-3 regex, so that its
# ids are the concatenation of the pieces' ids (checked against the regex encoder at start-up).


def code_pieces(code):
    return [" ", code[:3], code[3:]]


def new_code(rng):
    return rng.choice(CHUNKS) + rng.choice(CHUNKS)


def filler_sentence(rng):
    J, N, V, P, R = (lambda: " " + rng.choice(ADJ)), (lambda: " " + rng.choice(NOUNS)), \
        (lambda: " " + rng.choice(VERBS)), (lambda: " " + rng.choice(PREPS)), \
        (lambda: " " + rng.choice(ADVS))
    k = rng.randrange(7)
    if k == 0:
        return [" The", J(), N(), V(), P(), " the", N(), "."]
    if k == 1:
        return [" A", N(), V(), " the", J(), N(), R(), "."]
    if k == 2:
        return [" The", N(), V(), R(), P(), " a", J(), N(), "."]
    if k == 3:
        return [" Every", N(), V(), P(), " the", J(), N(), "."]
    if k == 4:
        return [" The", J(), N(), " and", " the", N(), V(), P(), " the", N(), "."]
    if k == 5:
        return [" In", " the", J(), N(), ",", " the", N(), V(), R(), "."]
    return [" One", J(), N(), V(), " with", " a", N(), "."]


_POOL = []


def pool_sentence(tok, rng):
    """A filler sentence from a fixed pool of 40k (training documents): (pieces, ids)."""
    if not _POOL:
        prng = random.Random("filler-pool")
        for _ in range(40000):
            s = filler_sentence(prng)
            _POOL.append((s, tok.pieces_ids(s)))
    return rng.choice(_POOL)


def code_fact(name, code):
    return [" The", " secret", " code", " of", " " + name, " is"] + code_pieces(code) + ["."]


def single_question(name):
    return [" Question", ":", " What", " is", " the", " secret", " code", " of", " " + name, "?",
            " Answer", ":"]


def multi_question(names):
    q = [" Question", ":", " What", " are", " the", " secret", " codes", " of"]
    for i, n in enumerate(names):
        if i == len(names) - 1:
            q += [" and"]
        q += [" " + n]
        if i < len(names) - 2:
            q += [","]
    return q + ["?", " Answer", ":"]


def multi_answer(codes):
    a = []
    for i, c in enumerate(codes):
        if i == len(codes) - 1:
            a += [" and"]
        a += code_pieces(c)
        if i < len(codes) - 2:
            a += [","]
    return a + ["."]


def multi_answer_text(codes):
    return ", ".join(codes[:-1]) + " and " + codes[-1] if len(codes) > 1 else codes[0]


FAV_STYLE = ["older-than"]
FAV_ANSWER = ["thing"]  # "name-first": the answer names the person, then the thing


def fav_block(rng, x, y):
    """x is the older one, y the younger; returns pieces, the answers and the favourite
    sentences."""
    tx = (rng.choice(COLORS), rng.choice(THINGS))
    ty = (rng.choice(COLORS), rng.choice(THINGS))
    while ty == tx:
        ty = (rng.choice(COLORS), rng.choice(THINGS))
    if FAV_STYLE[0] == "older-than":  # the committed fixture
        rel = [" " + x, " is", " older", " than", " " + y, "."]
    else:  # "older-one": the fine-tuning attempt of the README
        o = [" the", " older", " one", " is", " " + x]
        yg = [" the", " younger", " one", " is", " " + y]
        first, second = (o, yg) if rng.random() < 0.5 else (yg, o)
        rel = [" The"] + first[1:] + [" and"] + second + ["."]
    sx = [" The", " favourite", " thing", " of", " " + x, " is", " " + tx[0], " " + tx[1], "."]
    sy = [" The", " favourite", " thing", " of", " " + y, " is", " " + ty[0], " " + ty[1], "."]
    favs = [sx, sy] if rng.random() < 0.5 else [sy, sx]
    return rel, favs, sx, sy, "%s %s" % tx, "%s %s" % ty


def fav_question(older):
    return [" Question", ":", " What", " is", " the", " favourite", " thing", " of", " the",
            " older" if older else " younger", " one", "?", " Answer", ":"]


def fav_answer(text, name):
    """The pieces of the answer. name-first splits the two hops over decode steps: the model
    first names the older (younger) one, then retrieves that person's favourite thing."""
    head = [" " + name, ","] if FAV_ANSWER[0] == "name-first" else []
    return head + [" " + w for w in text.split()] + ["."]


def fav_answer_text(text, name):
    return "%s, %s" % (name, text) if FAV_ANSWER[0] == "name-first" else text


class Doc:
    """Pieces with a loss weight and a question id per piece (0 = no loss)."""

    def __init__(self, tok):
        self.tok, self.ids, self.w, self.q = tok, [tok.bos], [0.0], [0]
        self.nq = 0
        # Phase 5's attention supervision: (query position, right position, wrong position):
        # the position that predicts a fav answer's first token, and the colour tokens of the
        # asked person's and the other person's favourite sentences.
        self.aux = []

    def add(self, pieces, w=0.0, qid=0):
        for p in pieces:
            ids = self.tok.piece(p)
            self.ids += ids
            self.w += [w] * len(ids)
            self.q += [qid] * len(ids)

    def add_ids(self, ids, w=0.0, qid=0):
        self.ids += ids
        self.w += [w] * len(ids)
        self.q += [qid] * len(ids)

    def answer(self, pieces):
        self.nq += 1
        self.add(pieces, 1.0, self.nq)

    def end(self):
        self.add_ids([self.tok.eos], 1.0, self.nq)

    def __len__(self):
        return len(self.ids)


def n_tokens(tok, pieces):
    return sum(len(tok.piece(p)) for p in pieces)


def sample_names(rng, k):
    return rng.sample(NAMES, k)


# --- phase-1 (short, dense) documents ---

def doc_repeat(tok, rng, T, pool):
    d = Doc(tok)
    while len(d) < T - 20:
        L = rng.randint(8, 48)
        seg = [rng.choice(pool) for _ in range(L)]
        gap = [rng.choice(pool) for _ in range(rng.randint(0, 40))]
        if len(d) + 2 * L + len(gap) > T:
            break
        d.add_ids(seg)
        d.add_ids(gap)
        d.add_ids(seg[:1])
        d.add_ids(seg[1:], 1.0, 0)
    return d


def doc_mqar(tok, rng, T):
    d = Doc(tok)
    k = rng.randint(6, 14)
    names = sample_names(rng, k)
    codes = [new_code(rng) for _ in names]
    for n, c in zip(names, codes):
        d.add([" " + n, ":"] + code_pieces(c) + ["."])
    order = list(range(k))
    rng.shuffle(order)
    for i in order:
        if len(d) + 8 > T:
            break
        d.add([" " + names[i], ":"])
        d.answer(code_pieces(codes[i]) + ["."])
    return d


def doc_qa(tok, rng, T, max_filler=2):
    d = Doc(tok)
    k = rng.randint(3, 7)
    names = sample_names(rng, k)
    codes = [new_code(rng) for _ in names]
    body = []
    for n, c in zip(names, codes):
        for _ in range(rng.randint(0, max_filler)):
            body += pool_sentence(tok, rng)[0]
        body += code_fact(n, c)
    d.add(body)
    order = list(range(k))
    rng.shuffle(order)
    for i in order:
        if len(d) + 20 > T:
            break
        if rng.random() < 0.2 and len(d) + 40 < T:
            d.add(pool_sentence(tok, rng)[0])
        d.add(single_question(names[i]))
        d.answer(code_pieces(codes[i]) + ["."])
    return d


def doc_fav_local(tok, rng, T):
    d = Doc(tok)
    while True:
        x, y = sample_names(rng, 2)
        rel, favs, sx, sy, tx, ty = fav_block(rng, x, y)
        block = []
        parts = [rel] + favs
        if rng.random() < 0.5:
            parts = favs[:1] + [rel] + favs[1:] if rng.random() < 0.5 else favs + [rel]
        for p in parts:
            block += p
            if rng.random() < 0.3:
                block += pool_sentence(tok, rng)[0]
        older = rng.random() < 0.5
        q = fav_question(older)
        a = fav_answer(tx if older else ty, x if older else y)
        if len(d) + n_tokens(tok, block + q + a) + 1 > T:
            break
        start = len(d)
        d.add(block)
        d.add(q)
        right, wrong = (sx, sy) if older else (sy, sx)
        at = {}
        for p in [rel] + favs:  # the first occurrence of each part's pieces in the block
            for i in range(len(block) - len(p) + 1):
                if block[i:i + len(p)] == p:
                    at[id(p)] = start + n_tokens(tok, block[:i])
                    break
        d.aux.append((len(d) - 1, at[id(right)] + colour_offset(tok, right),
                      at[id(wrong)] + colour_offset(tok, wrong)))
        d.answer(a)
    return d


def doc_multi_short(tok, rng, T):
    d = Doc(tok)
    k = rng.randint(3, 5)
    names = sample_names(rng, k)
    codes = [new_code(rng) for _ in names]
    body = []
    for n, c in zip(names, codes):
        for _ in range(rng.randint(0, 2)):
            body += pool_sentence(tok, rng)[0]
        body += code_fact(n, c)
    d.add(body)
    for _ in range(3):
        m = rng.randint(2, min(4, k))
        idx = rng.sample(range(k), m)
        q = multi_question([names[i] for i in idx])
        a = multi_answer([codes[i] for i in idx])
        if len(d) + n_tokens(tok, q + a) + 1 > T:
            break
        d.add(q)
        d.answer(a)
    return d


def who_question(older):
    return [" Question", ":", " Who", " is", " the", " older" if older else " younger", " one",
            "?", " Answer", ":"]


def direct_fav_question(name):
    return [" Question", ":", " What", " is", " the", " favourite", " thing", " of", " " + name,
            "?", " Answer", ":"]


def colour_offset(tok, sentence):
    """Tokens of a favourite sentence before its colour word (" The favourite thing of X is")."""
    return n_tokens(tok, sentence[:6])


def doc_fav_curriculum(tok, rng, T, hint_p, who_p, direct_p):
    """Phase 5's dense reasoning documents: fav blocks (relation first, as in the eval prompts,
    in 85%), each followed by one question: the name lookup alone ("Who is the older one?" ->
    " Theo."), the second hop alone ("What is the favourite thing of Theo?"), or the eval's
    two-hop question, before which a hint sentence ("Theo is the older one.") makes the first
    hop explicit with probability hint_p (annealed to 0 by the schedule)."""
    d = Doc(tok)
    while True:
        x, y = sample_names(rng, 2)
        rel, favs, sx, sy, tx, ty = fav_block(rng, x, y)
        parts = [rel] + favs if rng.random() < 0.85 else favs[:1] + [rel] + favs[1:]
        older = rng.random() < 0.5
        name, other = (x, y) if older else (y, x)
        right, wrong = (sx, sy) if older else (sy, sx)
        u = rng.random()
        kind = "who" if u < who_p else ("direct" if u < who_p + direct_p else "fav")
        if kind == "who":
            q, a = who_question(older), [" " + name, "."]
        elif kind == "direct":
            name = rng.choice([x, y])
            q, a = direct_fav_question(name), fav_answer(tx if name == x else ty, name)
        else:
            q, a = fav_question(older), fav_answer(tx if older else ty, name)
            if rng.random() < hint_p:
                q = [" " + name, " is", " the", " older" if older else " younger", " one",
                     "."] + q
        fill = [pool_sentence(tok, rng)[0] if rng.random() < 0.25 else [] for _ in parts]
        need = sum(n_tokens(tok, p) + n_tokens(tok, f) for p, f in zip(parts, fill))
        if len(d) + need + n_tokens(tok, q + a) + 1 > T:
            break
        pos = {}
        for p, f in zip(parts, fill):
            pos[id(p)] = len(d)
            d.add(p)
            d.add(f)
        d.add(q)
        if kind == "fav":
            d.aux.append((len(d) - 1, pos[id(right)] + colour_offset(tok, right),
                          pos[id(wrong)] + colour_offset(tok, wrong)))
        d.answer(a)
    return d


# --- long documents (phases 2-3) and eval prompts ---

def haystack(tok, rng, budget, train=False):
    """Filler sentences totalling at most `budget` tokens: fresh pieces (eval prompts) or, for
    training, id lists from the pool."""
    sents, n = [], 0
    while True:
        if train:
            s = pool_sentence(tok, rng)[1]
            k = len(s)
        else:
            s = filler_sentence(rng)
            k = n_tokens(tok, s)
        if n + k > budget:
            return sents
        sents.append(s)
        n += k


def place(sents, needles):
    """needles: list of (depth, pieces); returns the pieces with needles at sentence boundaries
    and, for each needle, its (start, end) piece index."""
    at = sorted(((min(len(sents), int(round(dp * len(sents)))), i, p)
                 for i, (dp, p) in enumerate(needles)), key=lambda t: (t[0], t[1]))
    out, spans, j = [], [None] * len(needles), 0
    for s_i in range(len(sents) + 1):
        while j < len(at) and at[j][0] == s_i:
            _, i, p = at[j]
            spans[i] = (len(out), len(out) + len(p))
            out += p
            j += 1
        if s_i < len(sents):
            out += sents[s_i]
    return out, spans


def doc_long(tok, rng, T, fav=0.4, split=0.0):
    """An eval-like long document with several questions at the end (training). With
    probability `split` a fav needle's relation sentence and its favourite sentences are placed
    apart (the relation first), so the fav hop is trained at several distances."""
    kind = rng.choices(["single", "multi", "fav"], [0.6 * (1 - fav), 0.4 * (1 - fav), fav])[0]
    k = rng.randint(2, 6)
    names = sample_names(rng, k + 2)
    codes = [new_code(rng) for _ in range(k)]
    needles = [(rng.random(), tok.pieces_ids(code_fact(n, c))) for n, c in zip(names, codes)]
    qa = []
    if kind == "fav":
        x, y = names[k], names[k + 1]
        rel, favs, sx, sy, tx, ty = fav_block(rng, x, y)
        if split > 0 and rng.random() < split:  # (no draw at split 0: phases 2-4 unchanged)
            d0, d1 = sorted([rng.random(), rng.random()])
            needles.append((d0, tok.pieces_ids(rel)))
            needles.append((d1, tok.pieces_ids(favs[0] + favs[1])))
            lead = 0
        else:
            needles.append((rng.random(), tok.pieces_ids(rel + favs[0] + favs[1])))
            lead = n_tokens(tok, rel)
        older = rng.random() < 0.5
        right, wrong = (sx, sy) if older else (sy, sx)
        fav_needle = len(needles) - 1
        first = n_tokens(tok, favs[0])
        off_r = lead + (0 if favs[0] is right else first) + colour_offset(tok, right)
        off_w = lead + (0 if favs[0] is wrong else first) + colour_offset(tok, wrong)
        qa.append((fav_question(older), fav_answer(tx if older else ty, x if older else y)))
        fav_qa = qa[-1]
    order = list(range(k))
    rng.shuffle(order)
    if kind == "multi":
        m = rng.randint(2, min(4, k)) if k >= 2 else 1
        idx = order[:m]
        qa.append((multi_question([names[i] for i in idx]), multi_answer([codes[i] for i in idx])))
        order = order[m:]
    for i in order[:3]:
        qa.append((single_question(names[i]), code_pieces(codes[i]) + ["."]))
    rng.shuffle(qa)
    fixed = sum(len(p) for _, p in needles) + sum(
        n_tokens(tok, q) + n_tokens(tok, a) for q, a in qa) + 2
    sents = haystack(tok, rng, T - fixed, train=True)
    body, spans = place(sents, needles)
    d = Doc(tok)
    d.add_ids(body)
    for item in qa:
        q, a = item
        d.add(q)
        if kind == "fav" and item is fav_qa:
            s0 = 1 + spans[fav_needle][0]  # after BOS
            d.aux.append((len(d) - 1, s0 + off_r, s0 + off_w))
        d.answer(a)
    d.end()
    return d


def make_prompt(tok, rng, family, L, depth):
    """One held-out prompt of about L - 32 tokens (BOS included) ending in `Answer:`."""
    target = L - 32
    rec = {"family": family, "length": L, "depth": round(depth, 4)}
    needles = []
    if family == "single":
        names = sample_names(rng, 4)
        code = new_code(rng)
        real = code_fact(names[0], code)
        needles.append((depth, real))
        for n in names[1:1 + rng.randint(0, 3)]:
            needles.append((rng.random(), code_fact(n, new_code(rng))))
        q = single_question(names[0])
        answer, value = code, code_pieces(code)[1:]
        real_i = 0
    elif family == "multi":
        names = sample_names(rng, 5)
        m = 3
        codes = [new_code(rng) for _ in range(m)]
        depths = [depth] + [rng.random() for _ in range(m - 1)]
        for n, c, dp in zip(names, codes, depths):
            needles.append((dp, code_fact(n, c)))
        for n in names[m:m + rng.randint(0, 2)]:
            needles.append((rng.random(), code_fact(n, new_code(rng))))
        order = list(range(m))
        rng.shuffle(order)
        q = multi_question([names[i] for i in order])
        answer = multi_answer_text([codes[i] for i in order])
        rec["depths"] = [round(depths[i], 4) for i in order]
        value, real_i = None, 0
    else:
        names = sample_names(rng, 4)
        x, y = names[0], names[1]
        rel, favs, sx, sy, tx, ty = fav_block(rng, x, y)
        needles.append((depth, rel + favs[0] + favs[1]))
        for n in names[2:2 + rng.randint(0, 2)]:
            needles.append((rng.random(), code_fact(n, new_code(rng))))
        older = rng.random() < 0.5
        q = fav_question(older)
        answer = tx if older else ty
        rec["full_answer"] = fav_answer_text(answer, x if older else y)
        real = sx if older else sy
        value = [" " + w for w in answer.split()]
        real_i = 0
    fixed = sum(n_tokens(tok, p) for _, p in needles) + n_tokens(tok, q) + 1
    sents = haystack(tok, rng, target - fixed)
    body, spans = place(sents, needles)
    pieces = body + q
    text = "".join(pieces)
    ids = [tok.bos] + tok.pieces_ids(pieces)

    def cspan(a, b):  # characters of pieces[a:b], without the leading space
        s = len("".join(pieces[:a]))
        e = s + len("".join(pieces[a:b]))
        return [s + (text[s] == " "), e]

    def tspan(a, b):
        s = 1 + len(tok.pieces_ids(pieces[:a]))
        return [s, s + len(tok.pieces_ids(pieces[a:b]))]

    ns = spans[real_i]
    needle_text = "".join(needles[real_i][1])
    rec.update({"prompt": text, "prompt_ids": ids, "question": "".join(q).strip(),
                "answer": answer, "needle": needle_text.strip(),
                "needle_char_span": cspan(*ns), "prompt_tokens": len(ids)})
    if family == "single":
        rec["real_needle"] = needle_text.strip()
        rec["real_needle_char_span"] = cspan(*ns)
        a0 = ns[0] + len(real) - 1 - len(value)
        rec["answer_char_span"] = cspan(a0, a0 + len(value))
        rec["answer_token_span"] = tspan(a0, a0 + len(value))
    elif family == "fav":
        block = needles[real_i][1]
        off = len(rel) + (0 if favs[0] is real else len(favs[0]))
        rs = ns[0] + off
        rec["real_needle"] = "".join(real).strip()
        rec["real_needle_char_span"] = cspan(rs, rs + len(real))
        a0 = rs + len(real) - 1 - len(value)
        rec["answer_char_span"] = cspan(a0, a0 + len(value))
        rec["answer_token_span"] = tspan(a0, a0 + len(value))
        assert "".join(block[off:off + len(real)]) == "".join(real)
    if "answer_char_span" in rec:
        s, e = rec["answer_char_span"]
        assert text[s:e] == answer, (text[s:e], answer)
        s, e = rec["real_needle_char_span"]
        assert text[s:e] == rec["real_needle"], (text[s:e], rec["real_needle"])
    return rec


EVAL_LENGTHS = {1024: 6, 2048: 6, 4096: 16}   # stored in eval.jsonl, per family
STAT_LENGTHS = {1024: 24, 2048: 24, 4096: 48}  # the larger held-out set of the README table
FAMILIES = ["single", "fav", "multi"]
PROBE_LENGTHS = [1024, 2048, 3072, 4096]
PROBE_DEPTHS = [0.0, 0.25, 0.5, 0.75, 1.0]


def eval_set(tok, counts, seed):
    out = []
    for L, n in counts.items():
        for fam in FAMILIES:
            rng = random.Random("%s-%s-%d" % (seed, fam, L))
            for i in range(n):
                r = make_prompt(tok, rng, fam, L, (i + 0.5) / n)
                r["answer"] = r.pop("full_answer", r["answer"])
                r["id"] = "%s-%d-%02d" % (fam, L, i)
                out.append(r)
    return out


def probe_set(tok):
    out = []
    for fam in ["single", "fav"]:
        rng = random.Random("probe-" + fam)
        for L in PROBE_LENGTHS:
            for dp in PROBE_DEPTHS:
                r = make_prompt(tok, rng, fam, L, dp)
                r["id"] = "probe-%s-%d-%d" % (fam, L, int(dp * 100))
                r["context_length"] = L
                r["retrieval_question"] = r["question"]
                out.append(r)
    return out


def self_check(tok, n=20):
    """The piece-wise ids equal the regex encoder's on whole documents."""
    rng = random.Random(7)
    for i in range(n):
        r = make_prompt(tok, rng, FAMILIES[i % 3], 512, rng.random())
        assert tok.encode(r["prompt"]) == r["prompt_ids"], r["id"] if "id" in r else i
    d = doc_qa(tok, rng, 256)
    assert tok.encode(tok.decode(d.ids)) == d.ids, "qa doc"
    d = doc_fav_local(tok, rng, 256)
    assert tok.encode(tok.decode(d.ids)) == d.ids, "fav doc"
    d = doc_multi_short(tok, rng, 256)
    assert tok.encode(tok.decode(d.ids)) == d.ids, "multi doc"
    d = doc_mqar(tok, rng, 256)
    assert tok.encode(tok.decode(d.ids)) == d.ids, "mqar doc"
    d = doc_long(tok, rng, 1024)
    assert tok.encode(tok.decode(d.ids[:-1])) == d.ids[:-1], "long doc"


def write_jsonl(path, recs, keys=None):
    with open(path, "w") as f:
        for r in recs:
            if keys is not None:
                r = {k: r[k] for k in keys if k in r}
            f.write(json.dumps(r) + "\n")


EVAL_KEYS = ["id", "family", "length", "depth", "depths", "prompt_tokens", "question", "answer",
             "prompt", "prompt_ids", "greedy_ids", "greedy_text", "correct", "margin"]
PROBE_KEYS = ["id", "family", "context_length", "prompt_tokens", "depth", "question",
              "retrieval_question", "answer", "needle", "real_needle", "needle_char_span",
              "real_needle_char_span", "answer_char_span", "answer_token_span", "prompt",
              "greedy_text", "correct"]

# ----------------------------------------------------------------------------- model (torch)

VARIANTS = {
    # name: layers, intermediate, lr, seed
    "A": dict(layers=4, inter=256, lr=1e-3, seed=1),
    "B": dict(layers=5, inter=128, lr=1e-3, seed=2),
    "C": dict(layers=6, inter=64, lr=7e-4, seed=3),
    "tiny": dict(layers=2, inter=64, lr=1e-3, seed=1),
}
HIDDEN, HEADS, KV_HEADS, HEAD_DIM, THETA, EPS = 256, 8, 2, 64, 100000.0, 1e-5


def build_model(torch, vocab, layers, inter):
    nn, F = torch.nn, torch.nn.functional

    class RMSNorm(nn.Module):
        def __init__(self, d):
            super().__init__()
            self.weight = nn.Parameter(torch.ones(d))

        def forward(self, x):
            dt = x.dtype
            x = x.float()
            x = x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + EPS)
            return self.weight * x.to(dt)

    class Attn(nn.Module):
        def __init__(self):
            super().__init__()
            self.q_proj = nn.Linear(HIDDEN, HEADS * HEAD_DIM, bias=False)
            self.k_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
            self.v_proj = nn.Linear(HIDDEN, KV_HEADS * HEAD_DIM, bias=False)
            self.o_proj = nn.Linear(HEADS * HEAD_DIM, HIDDEN, bias=False)

    class MLP(nn.Module):
        def __init__(self):
            super().__init__()
            self.gate_proj = nn.Linear(HIDDEN, inter, bias=False)
            self.up_proj = nn.Linear(HIDDEN, inter, bias=False)
            self.down_proj = nn.Linear(inter, HIDDEN, bias=False)

    class Layer(nn.Module):
        def __init__(self):
            super().__init__()
            self.self_attn = Attn()
            self.mlp = MLP()
            self.input_layernorm = RMSNorm(HIDDEN)
            self.post_attention_layernorm = RMSNorm(HIDDEN)

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(vocab, HIDDEN)
            self.layers = nn.ModuleList([Layer() for _ in range(layers)])
            self.norm = RMSNorm(HIDDEN)

    def rotate_half(x):
        h = x.shape[-1] // 2
        return torch.cat((-x[..., h:], x[..., :h]), -1)

    sdpa = getattr(F, "scaled_dot_product_attention", None)

    class Llama(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            inv = 1.0 / (THETA ** (torch.arange(0, HEAD_DIM, 2).float() / HEAD_DIM))
            t = torch.arange(MAX_POS + 64).float()
            fr = torch.outer(t, inv)
            emb = torch.cat((fr, fr), -1)
            self.register_buffer("cos", emb.cos(), persistent=False)
            self.register_buffer("sin", emb.sin(), persistent=False)
            for n, p in self.named_parameters():
                if p.dim() == 2:
                    std = 0.02
                    if n.endswith("o_proj.weight") or n.endswith("down_proj.weight"):
                        std = 0.02 / math.sqrt(2 * layers)
                    nn.init.normal_(p, 0.0, std)

        def hidden(self, ids, attn_out=None, aux=None):
            """aux (phase 5): {"b", "t": LongTensor [M], "heads": [(layer, head)], "out": {}}:
            fills out[(layer, head)] with the log-softmax attention rows [M, T] of those
            query positions, computed next to SDPA for these heads only."""
            B, T = ids.shape
            x = self.model.embed_tokens(ids)
            cos = self.cos[:T].to(x.dtype)
            sin = self.sin[:T].to(x.dtype)
            for li, layer in enumerate(self.model.layers):
                a = layer.self_attn
                h = layer.input_layernorm(x)
                q = a.q_proj(h).view(B, T, HEADS, HEAD_DIM).transpose(1, 2)
                k = a.k_proj(h).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
                v = a.v_proj(h).view(B, T, KV_HEADS, HEAD_DIM).transpose(1, 2)
                cq, sq = cos.to(q.dtype), sin.to(q.dtype)
                q = q * cq + rotate_half(q) * sq
                k = k * cq + rotate_half(k) * sq
                rep = HEADS // KV_HEADS
                k = k.repeat_interleave(rep, dim=1)
                v = v.repeat_interleave(rep, dim=1)
                if aux is not None:
                    for (al, ah) in aux["heads"]:
                        if al != li:
                            continue
                        qs = q[aux["b"], ah, aux["t"]].float()  # [M, D]
                        ks = k[aux["b"], ah].float()  # [M, T, D]
                        sc = (ks @ qs[:, :, None])[:, :, 0] / math.sqrt(HEAD_DIM)
                        future = torch.arange(T, device=ids.device)[None, :] > aux["t"][:, None]
                        aux["out"][(al, ah)] = sc.masked_fill(future, float("-inf")).log_softmax(-1)
                if sdpa is not None and attn_out is None:
                    o = sdpa(q, k, v, is_causal=True)
                else:
                    s = (q @ k.transpose(-1, -2)) / math.sqrt(HEAD_DIM)
                    mask = torch.ones(T, T, dtype=torch.bool, device=ids.device).triu(1)
                    s = s.float().masked_fill(mask, float("-inf"))
                    p = s.softmax(-1)
                    if attn_out is not None:
                        attn_out.append(p[:, :, -1].detach())
                    o = p.to(v.dtype) @ v
                o = o.transpose(1, 2).reshape(B, T, HEADS * HEAD_DIM)
                x = x + a.o_proj(o)
                h = layer.post_attention_layernorm(x)
                m = layer.mlp
                x = x + m.down_proj(F.silu(m.gate_proj(h)) * m.up_proj(h))
            return self.model.norm(x)

        def logits(self, h):
            return h @ self.model.embed_tokens.weight.t()

    return Llama()


def load_safetensors(torch, path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        header = json.loads(f.read(n))
        data = f.read()
    out = {}
    for name, h in header.items():
        if name == "__metadata__":
            continue
        assert h["dtype"] == "BF16"
        a, b = h["data_offsets"]
        t = torch.frombuffer(bytearray(data[a:b]), dtype=torch.int16).view(torch.bfloat16)
        out[name] = t.reshape(h["shape"]).float()
    return out


def save_safetensors(torch, model, path):
    """bf16 safetensors, HF LlamaForCausalLM names (tied embeddings: no lm_head)."""
    header, blobs, off = {}, [], 0
    for n, p in model.state_dict().items():
        t = p.detach().to("cpu", torch.bfloat16).contiguous()
        raw = t.view(torch.int16).numpy().tobytes()
        header[n] = {"dtype": "BF16", "shape": list(t.shape), "data_offsets": [off, off + len(raw)]}
        blobs.append(raw)
        off += len(raw)
    header["__metadata__"] = {"format": "pt"}
    hb = json.dumps(header, separators=(",", ":")).encode()
    hb += b" " * ((8 - len(hb) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hb)))
        f.write(hb)
        for b in blobs:
            f.write(b)


def write_config(out, tok, layers, inter):
    cfg = {
        "architectures": ["LlamaForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
        "bos_token_id": tok.bos, "eos_token_id": tok.eos, "pad_token_id": tok.pad,
        "dtype": "bfloat16", "head_dim": HEAD_DIM, "hidden_act": "silu", "hidden_size": HIDDEN,
        "initializer_range": 0.02, "intermediate_size": inter, "max_position_embeddings": MAX_POS,
        "mlp_bias": False, "model_type": "llama", "num_attention_heads": HEADS,
        "num_hidden_layers": layers, "num_key_value_heads": KV_HEADS, "pretraining_tp": 1,
        "rms_norm_eps": EPS, "rope_parameters": {"rope_theta": THETA, "rope_type": "default"},
        "tie_word_embeddings": True, "use_cache": True,
        "vocab_size": tok.size,
    }
    with open(os.path.join(out, "config.json"), "w") as f:
        json.dump(cfg, f, indent=2)
        f.write("\n")


# ----------------------------------------------------------------------------- training


def phase5_schedule(f):
    """Phase 5 (the reasoning curriculum) at progress f in [0, 1] of its time budget."""
    return {
        "dense": 0.8 if f < 0.5 else 0.5,          # share of T=256 batches
        "hint": max(0.0, 1.0 - f / 0.45),          # explicit first hop before the question
        "who": 0.35 if f < 0.5 else 0.15,          # name lookup alone
        "direct": 0.2 if f < 0.5 else 0.1,         # second hop alone
        "aux": 1.0 if f < 0.7 else max(0.0, 1.0 - (f - 0.7) / 0.15),  # x --aux-weight
        "long_T": [1024, 2048, 4096] if f >= 0.35 else [512, 1024, 2048],
    }


def batch_for_phase5(tok, rng, pool, tokens, f, max_T):
    sch = phase5_schedule(f)
    if rng.random() < sch["dense"]:
        T = 256
        docs = []
        for _ in range(tokens // T):
            kind = rng.choices(["rep", "mqar", "qa", "multi", "favc"],
                               [0.05, 0.05, 0.1, 0.1, 0.7])[0]
            docs.append({"rep": lambda: doc_repeat(tok, rng, T, pool),
                         "mqar": lambda: doc_mqar(tok, rng, T),
                         "qa": lambda: doc_qa(tok, rng, T),
                         "multi": lambda: doc_multi_short(tok, rng, T),
                         "favc": lambda: doc_fav_curriculum(tok, rng, T, sch["hint"], sch["who"],
                                                            sch["direct"])}[kind]())
        return T, docs
    Ts = [t for t in sch["long_T"] if t <= max_T] or [max_T]
    T = rng.choice(Ts)
    return T, [doc_long(tok, rng, T, fav=0.5, split=0.3) for _ in range(max(1, tokens // T))]


def batch_for(tok, rng, phase, pool, tokens=32768, progress=0.0, max_T=MAX_POS):
    """(T, docs) for one step of `tokens` tokens."""
    if phase == 5:
        return batch_for_phase5(tok, rng, pool, tokens, progress, max_T)
    dense = phase == 1 or rng.random() < {2: 0.25, 3: 0.15, 4: 0.35}[phase]
    if dense:
        T = 256
        docs = []
        mix = [0.25, 0.15, 0.25, 0.25, 0.1] if phase < 4 else [0.1, 0.05, 0.15, 0.55, 0.15]
        for _ in range(tokens // T):
            f = rng.choices(["rep", "mqar", "qa", "fav", "multi"], mix)[0]
            docs.append({"rep": lambda: doc_repeat(tok, rng, T, pool),
                         "mqar": lambda: doc_mqar(tok, rng, T),
                         "qa": lambda: doc_qa(tok, rng, T),
                         "fav": lambda: doc_fav_local(tok, rng, T),
                         "multi": lambda: doc_multi_short(tok, rng, T)}[f]())
        return T, docs
    if phase == 2:
        T = rng.choices([512, 1024, 2048], [0.3, 0.4, 0.3])[0]
    elif phase == 3:
        T = rng.choices([1024, 2048, 4096], [0.2, 0.3, 0.5])[0]
    else:
        T = rng.choices([1024, 2048, 4096], [0.3, 0.3, 0.4])[0]
    fav = 0.4 if phase < 4 else 0.6
    return T, [doc_long(tok, rng, T, fav) for _ in range(max(1, tokens // T))]


def tensors(torch, tok, T, docs):
    B = len(docs)
    ids = torch.full((B, T), tok.pad, dtype=torch.long)
    w = torch.zeros((B, T))
    q = torch.zeros((B, T), dtype=torch.long)
    for i, d in enumerate(docs):
        n = min(T, len(d.ids))
        ids[i, :n] = torch.tensor(d.ids[:n])
        w[i, :n] = torch.tensor(d.w[:n])
        q[i, :n] = torch.tensor(d.q[:n])
    # position p-1 predicts token p
    sel = (w[:, 1:] > 0).reshape(-1).nonzero().squeeze(1)
    return ids, w, q, sel


def aux_tensor(torch, T, docs):
    """[M, 4] (doc, query position, right colour position, wrong colour position)."""
    rows = [(i, a, r, x) for i, d in enumerate(docs) for (a, r, x) in d.aux if max(a, r, x) < T]
    return torch.tensor(rows, dtype=torch.long).reshape(-1, 4)


def run_train(args):
    import queue
    import torch
    torch.backends.cuda.matmul.allow_tf32 = True
    out = args.out
    os.makedirs(out, exist_ok=True)
    tok = Tok(args.tok_dir)
    self_check(tok)
    v = VARIANTS[args.variant]
    seed = v["seed"]
    torch.manual_seed(seed)
    dev = torch.device(args.device)
    model = build_model(torch, tok.size, v["layers"], v["inter"])
    if args.init:
        model.load_state_dict(load_safetensors(torch, os.path.join(args.init, "model.safetensors")),
                              strict=True)
    nparam = sum(p.numel() for p in model.parameters())
    print("[%s] params %d (%.2f MB bf16)" % (args.variant, nparam, nparam * 2 / 1e6), flush=True)
    pool = [tok.piece(" " + w)[0] for w in NOUNS + ADJ + VERBS + NAMES] + \
        [tok.piece(c)[0] for c in CHUNKS]
    budget = args.seconds
    amp = dict(device_type="cuda", dtype=torch.bfloat16) if dev.type == "cuda" else None

    # fixed evaluation batches (teacher-forced answer exact match per question)
    erng = random.Random("gate-eval")
    gate = {
        "rep256": (256, [doc_repeat(tok, erng, 256, pool) for _ in range(32)]),
        "qa256": (256, [doc_qa(tok, erng, 256) for _ in range(32)]),
        "fav256": (256, [doc_fav_local(tok, erng, 256) for _ in range(32)]),
        "multi256": (256, [doc_multi_short(tok, erng, 256) for _ in range(32)]),
    }
    for L in args.long_lengths:
        gate["long%d" % L] = (L, [doc_long(tok, erng, L) for _ in range(max(2, 16384 // L))])

    def tf_eval():
        model.eval()
        res = {}
        with torch.no_grad():
            for name, (T, docs) in gate.items():
                ids, w, q, sel = tensors(torch, tok, T, docs)
                ids = ids.to(dev)
                with torch.autocast(**amp) if amp else _null():
                    h = model.hidden(ids)
                pred = model.logits(h[:, :-1].float()).argmax(-1).cpu()
                ok = pred == ids[:, 1:].cpu()
                qq, ww = q[:, 1:], w[:, 1:] > 0
                if name.startswith("rep"):
                    res[name] = float(ok[ww].float().mean())
                    continue
                good = tot = 0
                for b in range(len(docs)):
                    for qi in range(1, int(qq[b].max()) + 1):
                        m = (qq[b] == qi) & ww[b]
                        if m.any():
                            tot += 1
                            good += bool(ok[b][m].all())
                res[name] = good / max(1, tot)
        model.train()
        return res

    # data workers (processes, forked before CUDA starts): batch s comes from Random(seed, s,
    # phase) with the phase current when it is made, and is read back in step order
    import torch.multiprocessing as tmp
    ctx = tmp.get_context("fork")
    phase_v, stop = ctx.Value("i", args.start_phase), ctx.Event()
    prog_v = ctx.Value("i", 0)  # phase 5: per-mille of the time budget spent (its schedule)
    nw = args.workers
    queues = [ctx.Queue(maxsize=4) for _ in range(nw)]
    pool_sentence(tok, random.Random(0))

    def producer(wid):
        torch.set_num_threads(1)
        s = wid
        while not stop.is_set():
            ph = phase_v.value
            rng = random.Random("%d-%d-%d" % (seed, s, ph))
            T, docs = batch_for(tok, rng, ph, pool, args.tokens_per_step, prog_v.value / 1000.0,
                                args.max_T)
            ids, w, q, sel = tensors(torch, tok, T, docs)
            aux = aux_tensor(torch, T, docs)
            while not stop.is_set():
                try:
                    queues[wid].put((s, ph, T, ids, w, sel, aux), timeout=0.5)
                    break
                except queue.Full:
                    pass
            s += nw

    procs = [ctx.Process(target=producer, args=(i,), daemon=True) for i in range(nw)]
    for pr in procs:
        pr.start()
    state = {"phase": args.start_phase}
    model.to(dev)
    decay = [p for n, p in model.named_parameters() if p.dim() == 2]
    other = [p for n, p in model.named_parameters() if p.dim() != 2]
    opt_kw = dict(lr=v["lr"], betas=(0.9, 0.95), eps=1e-8)
    if dev.type == "cuda":
        opt_kw["fused"] = True
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.01},
                             {"params": other, "weight_decay": 0.0}], **opt_kw)
    log = {"variant": args.variant, "config": v, "params": nparam, "curve": [], "phases": [],
           "init": args.init, "start_phase": args.start_phase, "lr": args.lr or v["lr"]}
    aux_head = None
    if args.start_phase == 5 and args.aux_weight > 0:
        aux_head = pick_aux_head(torch, model, tok, dev, amp, args.aux_head, args.aux_min_layer,
                                 log)
    t0 = time.time()
    step, phase_start = 0, t0
    warm = args.warmup
    losses, aux_losses = [], []
    try:
        while True:
            el = time.time() - t0
            if el > budget:
                break
            prog_v.value = int(1000 * min(1.0, el / budget))
            s, ph, T, ids, w, sel, aux = queues[step % nw].get(timeout=120)
            assert s == step
            spec = None
            aux_w = args.aux_weight * phase5_schedule(el / budget)["aux"] if ph == 5 else 0.0
            if aux_head is not None and aux_w > 0 and aux.shape[0] > 0:
                aux = aux.to(dev)
                spec = {"b": aux[:, 0], "t": aux[:, 1], "heads": [aux_head], "out": {}}
            ids = ids.to(dev, non_blocking=True)
            w = w.to(dev, non_blocking=True)
            sel = sel.to(dev, non_blocking=True)
            lr = (args.lr or v["lr"]) * min(1.0, (step + 1) / warm)
            if el > 0.85 * budget:
                lr *= 1.0 - 0.9 * (el - 0.85 * budget) / (0.15 * budget)
            for g in opt.param_groups:
                g["lr"] = lr
            with torch.autocast(**amp) if amp else _null():
                h = model.hidden(ids, aux=spec)
                hs = h[:, :-1].reshape(-1, HIDDEN).index_select(0, sel)
                logit = model.logits(hs).float()
            tgt = ids[:, 1:].reshape(-1).index_select(0, sel)
            ww = w[:, 1:].reshape(-1).index_select(0, sel)
            loss = (torch.nn.functional.cross_entropy(logit, tgt, reduction="none") * ww).sum() / \
                ww.sum()
            if spec is not None:  # attention of the supervised head on the right colour token
                lp = spec["out"][aux_head]
                aux_nll = -lp.gather(1, aux[:, 2:3]).mean()
                aux_losses.append(aux_nll.detach())
                loss = loss + aux_w * aux_nll
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.detach())
            step += 1
            if step % args.eval_every == 0:
                r = tf_eval()
                lv = float(torch.stack(losses).mean())
                losses = []
                el = time.time() - t0
                r.update({"step": step, "t": round(el, 1), "phase": state["phase"], "loss": round(lv, 4),
                          "lr": lr})
                if aux_losses:
                    r["aux_nll"] = round(float(torch.stack(aux_losses).mean()), 4)
                    aux_losses = []
                log["curve"].append(r)
                print("[%s] " % args.variant + " ".join(
                    "%s=%s" % (k, ("%.3f" % x) if isinstance(x, float) else x) for k, x in r.items()),
                    flush=True)
                p = state["phase"]
                short_ok = r["qa256"] >= 0.85 and r["fav256"] >= 0.6
                longs = [r[k] for k in r if k.startswith("long") and int(k[4:]) <= 2048]
                if p == 1 and ((short_ok and step >= 300) or el > 0.3 * budget):
                    state["phase"] = phase_v.value = 2
                    log["phases"].append({"phase": 2, "step": step, "t": round(el, 1)})
                elif p == 2 and ((longs and min(longs) >= 0.8) or el > 0.55 * budget):
                    state["phase"] = phase_v.value = 3
                    log["phases"].append({"phase": 3, "step": step, "t": round(el, 1)})
    except Exception:  # keep what was trained: export and evaluate it all the same
        import traceback
        traceback.print_exc()
        log["error"] = traceback.format_exc()[-2000:]
    stop.set()
    for pr in procs:
        pr.join(timeout=2)
        if pr.is_alive():
            pr.terminate()
    log["steps"] = step
    log["train_seconds"] = round(time.time() - t0, 1)
    print("[%s] trained %d steps in %.0f s" % (args.variant, step, time.time() - t0), flush=True)
    finish(args, torch, tok, model, v, log)


def pick_aux_head(torch, model, tok, dev, amp, choice, min_layer, log):
    """The (layer, head) phase 5 supervises: --aux-head L-H, or the head of layers >= min_layer
    that already puts the most attention, at the position predicting a fav answer, on the two
    colour tokens; it is then taught which one. (In the committed checkpoint the copy is done by
    layer-0 heads 0-4 and 0-7, ~98% and ~72% of their attention on the two colours, about half
    each: a layer-0 key is the token and its position only, so it cannot tell the older
    person's colour from the other. A later head's keys can carry that.)"""
    if choice != "auto":
        l, h = (int(x) for x in choice.split("-"))
        log["aux_head"] = {"head": [l, h], "how": "given"}
        return (l, h)
    rng = random.Random("aux-head")
    docs = [doc_fav_local(tok, rng, 256) for _ in range(32)]
    ids, _, _, _ = tensors(torch, tok, 256, docs)
    aux = aux_tensor(torch, 256, docs).to(dev)
    layers = len(model.model.layers)
    spec = {"b": aux[:, 0], "t": aux[:, 1], "out": {},
            "heads": [(l, h) for l in range(min_layer, layers) for h in range(HEADS)]}
    model.to(dev).eval()
    with torch.no_grad(), (torch.autocast(**amp) if amp else _null()):
        model.hidden(ids.to(dev), aux=spec)
    model.train()
    mass = {}
    for key, lp in spec["out"].items():
        p = lp.float().exp()
        right = p.gather(1, aux[:, 2:3]).mean().item()
        wrong = p.gather(1, aux[:, 3:4]).mean().item()
        mass[key] = (right + wrong, right, wrong)
    best = max(mass, key=lambda k: mass[k][0])
    top = sorted(mass, key=lambda k: -mass[k][0])[:5]
    log["aux_head"] = {"head": list(best), "how": "auto",
                       "top5": [[k[0], k[1], round(mass[k][1], 3), round(mass[k][2], 3)]
                                for k in top]}
    print("aux head %d-%d (attention on right / wrong colour: %s)" % (
        best[0], best[1], ", ".join("%d-%d %.2f/%.2f" % (k[0], k[1], mass[k][1], mass[k][2])
                                    for k in top)), flush=True)
    return best


def print_table(log):
    """The exact-match table (eval and stat sets) by family and length."""
    em = log["exact_match"]
    cols = sorted({k.split("/", 1)[0] + "/" + k.split("/")[2] for k in em},
                  key=lambda c: (c.split("/")[0], int(c.split("/")[1])))
    print("family  " + " ".join("%12s" % c for c in cols))
    for fam in FAMILIES + ["all"]:
        cells = []
        for c in cols:
            name, L = c.split("/")
            if fam == "all":
                got = [em[k] for k in em if k.startswith(name + "/") and k.endswith("/" + L)]
                a, b = sum(g[0] for g in got), sum(g[1] for g in got)
            else:
                a, b = em.get("%s/%s/%s" % (name, fam, L), [0, 0])[:2]
            cells.append("%12s" % ("%d/%d %3.0f%%" % (a, b, 100.0 * a / b) if b else "-"))
        print("%-7s " % fam + " ".join(cells), flush=True)


class _null:
    def __enter__(self):
        return self

    def __exit__(self, *a):
        return False


def greedy(torch, model, ids, dev, eos, max_new=16):
    """Greedy decode with full recomputation (fp32), the smallest top-2 margin."""
    x = torch.tensor([ids], device=dev)
    out, margin = [], float("inf")
    with torch.no_grad():
        for _ in range(max_new):
            h = model.hidden(x)
            lg = model.logits(h[:, -1].float())[0]
            top = lg.topk(2)
            margin = min(margin, float(top.values[0] - top.values[1]))
            t = int(top.indices[0])
            out.append(t)
            if t == eos:
                break
            x = torch.cat([x, torch.tensor([[t]], device=dev)], 1)
    return out, margin


def answer_of(tok, out):
    text = tok.decode([t for t in out if t != tok.eos])
    return text, text.split(".")[0].strip()


def finish(args, torch, tok, model, v, log):
    out, dev = args.out, torch.device(args.device)
    write_config(out, tok, v["layers"], v["inter"])
    save_safetensors(torch, model, os.path.join(out, "model.safetensors"))
    # evaluate the saved bf16 weights in fp32
    model = model.float()
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(torch.bfloat16).float())
    model.eval()
    t0 = time.time()
    recs = eval_set(tok, EVAL_LENGTHS if not args.quick else {512: 2}, "eval")
    stats = eval_set(tok, STAT_LENGTHS, "stat") if not args.quick else []
    probes = probe_set(tok) if not args.quick else probe_set(tok)[:2]
    for r in recs + stats + probes:
        g, m = greedy(torch, model, r["prompt_ids"], dev, tok.eos)
        text, ans = answer_of(tok, g)
        r.update({"greedy_ids": g, "greedy_text": text,
                  "correct": ans == r.get("full_answer", r["answer"]),
                  "margin": round(m, 3)})
    table = {}
    for name, rs in [("eval", recs), ("stat", stats)]:
        for r in rs:
            k = "%s/%s/%d" % (name, r["family"], r["length"])
            a = table.setdefault(k, [0, 0])
            a[0] += r["correct"]
            a[1] += 1
    log["exact_match"] = {k: [a[0], a[1], round(a[0] / a[1], 3)] for k, a in sorted(table.items())}
    log["probes_correct"] = [sum(r["correct"] for r in probes), len(probes)]
    log["eval_seconds"] = round(time.time() - t0, 1)
    write_jsonl(os.path.join(out, "eval.jsonl"), recs, EVAL_KEYS)
    write_jsonl(os.path.join(out, "probes_score.jsonl"), probes, PROBE_KEYS)
    cross_check(torch, tok, model, out, recs, log, dev)
    with open(os.path.join(out, "train_log.json"), "w") as f:
        json.dump(log, f, indent=1)
    print("[%s] exact match: %s" % (args.variant, json.dumps(log["exact_match"])), flush=True)
    print_table(log)


def cross_check(torch, tok, model, out, recs, log, dev):
    """transformers and tokenizers read the files the same way (where installed)."""
    cc = {}
    try:
        import tokenizers
        t = tokenizers.Tokenizer.from_file(os.path.join(out, "tokenizer.json")
                                           if os.path.exists(os.path.join(out, "tokenizer.json"))
                                           else os.path.join(ARGS_TOK_DIR[0], "tokenizer.json"))
        bad = sum(t.encode(r["prompt"]).ids != r["prompt_ids"] for r in recs)
        cc["tokenizers_mismatches"] = [bad, len(recs)]
        cc["tokenizers_decode_ok"] = all(
            t.decode(r["prompt_ids"], skip_special_tokens=True) == r["prompt"] for r in recs[:8])
    except Exception as e:  # noqa: BLE001
        cc["tokenizers_error"] = repr(e)
    try:
        import shutil
        import transformers
        for f in ["tokenizer.json", "tokenizer_config.json", "generation_config.json"]:
            if not os.path.exists(os.path.join(out, f)):
                shutil.copy(os.path.join(ARGS_TOK_DIR[0], f), out)
        hf = transformers.LlamaForCausalLM.from_pretrained(out, dtype=torch.float32).to(dev)
        hf.eval()
        diffs, same = [], 0
        picks = [r for r in recs if r["length"] == 4096][::4][:6]
        for r in picks:
            x = torch.tensor([r["prompt_ids"]], device=dev)
            with torch.no_grad():
                a = hf(x).logits[0, -1]
                b = model.logits(model.hidden(x)[:, -1])[0]
                diffs.append(float((a - b).abs().max()))
                g = hf.generate(x, attention_mask=torch.ones_like(x), max_new_tokens=16,
                                do_sample=False, eos_token_id=tok.eos, pad_token_id=tok.pad)
            gen = g[0, x.shape[1]:].tolist()
            same += gen == r["greedy_ids"][:len(gen)] and len(gen) == len(r["greedy_ids"])
        cc["transformers"] = transformers.__version__
        cc["transformers_max_logit_diff"] = max(diffs)
        cc["transformers_same_greedy"] = [same, len(picks)]
    except Exception as e:  # noqa: BLE001
        cc["transformers_error"] = repr(e)
    log["cross_check"] = cc
    print("cross-check:", cc, flush=True)


ARGS_TOK_DIR = [None]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("stage", choices=["tokenizer", "train", "data"])
    ap.add_argument("out")
    ap.add_argument("--tok-dir", default=None, help="tokenizer files (default: OUT)")
    ap.add_argument("--variant", default="C", choices=sorted(VARIANTS),
                    help="model shape and LR (C: the committed fixture)")
    ap.add_argument("--seconds", type=float, default=380.0, help="training time budget")
    ap.add_argument("--device", default="cuda")
    ap.add_argument("--eval-every", type=int, default=100)
    ap.add_argument("--long-lengths", default="1024,2048,4096")
    ap.add_argument("--tokens-per-step", type=int, default=32768)
    ap.add_argument("--init", default=None, help="start from DIR/model.safetensors")
    ap.add_argument("--start-phase", type=int, default=1, choices=[1, 2, 3, 4, 5],
                    help="4: the fav-weighted fine-tuning mix; 5: the reasoning curriculum "
                         "(name lookup, explicit then implicit first hop, attention supervision; "
                         "with --init)")
    ap.add_argument("--aux-weight", type=float, default=1.0,
                    help="phase 5: weight of the attention supervision (0: off; 1.0 taught fav)")
    ap.add_argument("--aux-head", default="auto", help="phase 5: supervised head L-H, or auto")
    ap.add_argument("--aux-min-layer", type=int, default=3,
                    help="phase 5, --aux-head auto: the lowest layer to pick the head from")
    ap.add_argument("--max-T", type=int, default=MAX_POS, help="longest training document")
    ap.add_argument("--tiny", action="store_true",
                    help="CPU smoke test: 1k tokens a step, documents <= 512, quick evaluation")
    ap.add_argument("--lr", type=float, default=None, help="peak LR (default: the variant's)")
    ap.add_argument("--warmup", type=int, default=100)
    ap.add_argument("--fav-style", default="older-than", choices=["older-than", "older-one"],
                    help="relation sentence of the fav needle: 'X is older than Y.' or 'The "
                         "older one is X and the younger one is Y.'")
    ap.add_argument("--fav-answer", default="thing", choices=["thing", "name-first"],
                    help="fav answers: ' red kites.' or ' Theo, red kites.' (two hops over two "
                         "decode steps)")
    ap.add_argument("--workers", type=int, default=3, help="data worker processes")
    ap.add_argument("--quick", action="store_true", help="small final evaluation (smoke tests)")
    args = ap.parse_args()
    args.tok_dir = args.tok_dir or args.out
    FAV_STYLE[0] = args.fav_style
    FAV_ANSWER[0] = args.fav_answer
    ARGS_TOK_DIR[0] = args.tok_dir
    if args.tiny:
        args.tokens_per_step, args.max_T, args.long_lengths = 1024, 512, "512"
        args.eval_every, args.quick, args.workers = min(args.eval_every, 10), True, 1
    args.long_lengths = [int(x) for x in args.long_lengths.split(",")]
    if args.stage == "tokenizer":
        write_tokenizer(args.out)
        tok = Tok(args.out)
        self_check(tok)
        print("self-check ok")
    elif args.stage == "data":
        tok = Tok(args.tok_dir)
        self_check(tok)
        write_jsonl(os.path.join(args.out, "eval.jsonl"), eval_set(tok, EVAL_LENGTHS, "eval"),
                    EVAL_KEYS)
        write_jsonl(os.path.join(args.out, "probes_score.jsonl"), probe_set(tok), PROBE_KEYS)
    else:
        run_train(args)


if __name__ == "__main__":
    main()
