#!/usr/bin/env python3
"""gRPC end to end for logprobs, penalties and n > 1, from Python (grpcio), against a running
`hkv serve` (tests/python_sampling_test.sh starts one). Exits non-zero on the first failure."""
import math
import os
import sys

import grpc

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "examples"))
import python_client  # noqa: E402  (its load_stubs generates the stubs)

pb, pb_grpc = python_client.load_stubs()
stub = pb_grpc.GenerationStub(grpc.insecure_channel(sys.argv[1]))
TIMEOUT = 60


def generate(**sampling):
    request = pb.GenerateRequest(prompt="Once upon a time", sampling=pb.SamplingParams(**sampling))
    return list(stub.Generate(request, timeout=TIMEOUT))


def expect_invalid(what, **sampling):
    try:
        generate(**sampling)
    except grpc.RpcError as e:
        assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, (what, e.code(), e.details())
        print(f"{what}: INVALID_ARGUMENT ({e.details()})")
        return
    raise AssertionError(f"{what}: accepted")


# Logprobs: one per token; greedy samples the most likely; the top list is sorted; the
# probabilities of a top list never sum past 1.
responses = generate(max_tokens=12, temperature=0, ignore_eos=True, logprobs=True, top_logprobs=5)
tokens = 0
for r in responses:
    assert len(r.logprobs) == len(r.token_ids), r
    for tid, lp in zip(r.token_ids, r.logprobs):
        assert lp.token_id == tid and lp.logprob <= 0.0, lp
        assert len(lp.top) == 5, lp
        assert lp.top[0].token_id == tid and abs(lp.top[0].logprob - lp.logprob) < 1e-6, lp
        tops = [t.logprob for t in lp.top]
        assert tops == sorted(tops, reverse=True), tops
        assert sum(math.exp(t) for t in tops) <= 1.0 + 1e-5, tops
        tokens += 1
assert tokens == 12, tokens
print("logprobs OK")


def by_index(responses):
    out = {}
    for r in responses:
        s = out.setdefault(r.index, {"ids": [], "finish": None, "usage": None})
        assert s["finish"] is None, f"sample {r.index} continued after it finished"
        s["ids"].extend(r.token_ids)
        if r.finish_reason:
            s["finish"], s["usage"] = r.finish_reason, r.usage
    return out


# n = 3 greedy: three identical samples, each finished, the prompt counted once.
one = by_index(generate(max_tokens=10, temperature=0, ignore_eos=True))[0]["ids"]
three = by_index(generate(max_tokens=10, temperature=0, ignore_eos=True, n=3))
assert sorted(three) == [0, 1, 2], three.keys()
for i, s in three.items():
    assert s["ids"] == one, (i, s["ids"], one)
    assert s["finish"] == pb.FINISH_REASON_LENGTH, s
    assert s["usage"].generated_tokens == 10, s["usage"]
    assert (s["usage"].prompt_tokens > 0) == (i == 0), (i, s["usage"])
print("n = 3 greedy OK")

# n = 4 sampled with a seed: reproducible, and the samples differ.
a = by_index(generate(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True, n=4))
b = by_index(generate(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True, n=4))
assert [a[i]["ids"] for i in range(4)] == [b[i]["ids"] for i in range(4)]
assert len({tuple(a[i]["ids"]) for i in range(4)}) > 1, a
# Sample 0 is what n = 1 with the same seed samples.
solo = by_index(generate(max_tokens=16, temperature=1.0, seed=99, ignore_eos=True))[0]["ids"]
assert solo == a[0]["ids"], (solo, a[0]["ids"])
print("n = 4 seeded OK")

# Penalties change a greedy continuation; min_p 1 is greedy.
plain = by_index(generate(max_tokens=30, temperature=0, ignore_eos=True))[0]["ids"]
pen = by_index(generate(max_tokens=30, temperature=0, ignore_eos=True, frequency_penalty=2.0,
                        presence_penalty=1.0, repetition_penalty=1.5))[0]["ids"]
assert pen != plain, pen
minp = by_index(generate(max_tokens=30, temperature=1.5, seed=5, ignore_eos=True, min_p=1.0))
assert minp[0]["ids"] == plain, (minp[0]["ids"], plain)
print("penalties and min_p OK")

expect_invalid("top_logprobs 21", logprobs=True, top_logprobs=21)
expect_invalid("top_logprobs without logprobs", top_logprobs=3)
expect_invalid("n 17 (--max-n 16)", n=17)
expect_invalid("presence_penalty 3", presence_penalty=3.0)
expect_invalid("min_p 1.5", min_p=1.5)
expect_invalid("min_tokens past max_tokens", max_tokens=4, min_tokens=5)
try:
    stub.Complete(pb.GenerateRequest(prompt="Hi", sampling=pb.SamplingParams(n=2)),
                  timeout=TIMEOUT)
    raise AssertionError("Complete accepted n = 2")
except grpc.RpcError as e:
    assert e.code() == grpc.StatusCode.INVALID_ARGUMENT, e
print("sampling over gRPC OK")
