#!/usr/bin/env python3
"""Makes the tiny Hugging Face fixtures under tests/data/hf/ with transformers itself.

For each architecture hkv loads (Llama with llama3 rope scaling, Mistral, Qwen2 with q/k/v
biases and tied embeddings) it builds a 2-layer GQA model with random weights, saves it with
save_pretrained (safetensors: Llama as one f32 file, Mistral as sharded bf16 with an index,
Qwen2 as f16), then records transformers' fp32 logits at the last position of a few prompts and
greedy continuations (expected.json). `llama_hd64` is a Llama with head_dim 64 (bf16), the
smallest shape the CUDA kernels serve, for the GPU worker's test against transformers. Run where
torch + transformers are installed (optionally naming the fixtures to make):

    python3 tests/data/make_fixtures.py tests/data/hf [name...]
"""
import json
import os
import sys

import torch
import transformers
from transformers import (LlamaConfig, LlamaForCausalLM, MistralConfig, MistralForCausalLM,
                          Qwen2Config, Qwen2ForCausalLM)

PROMPTS = [[1, 17, 42, 99, 5], [1, 200, 201, 202, 203, 204, 205, 206, 207, 3, 3, 3], [7]]
COMMON = dict(hidden_size=64, intermediate_size=160, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, vocab_size=256, max_position_embeddings=512,
              rms_norm_eps=1e-5, bos_token_id=1, eos_token_id=2, pad_token_id=0)


def build(name, cls, config, dtype, shard):
    torch.manual_seed(hash(name) % 1000)
    model = cls(config)
    with torch.no_grad():  # Make norms non-trivial so they are really tested.
        for n, p in model.named_parameters():
            if "norm" in n:
                p.copy_(1.0 + 0.1 * torch.randn_like(p))
    out_dir = os.path.join(sys.argv[1], name)
    model.to(dtype).save_pretrained(out_dir, safe_serialization=True,
                                    max_shard_size="60KB" if shard else "50GB")
    # Reference in fp32 from the saved (possibly bf16/f16) weights, eager attention.
    ref = cls.from_pretrained(out_dir, torch_dtype=torch.float32, attn_implementation="eager")
    ref.eval()
    cases = []
    for prompt in PROMPTS:
        ids = torch.tensor([prompt])
        with torch.no_grad():
            logits = ref(ids).logits[0, -1].tolist()
            gen = ref.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=8,
                               do_sample=False, pad_token_id=0, eos_token_id=None)
        cases.append({"prompt": prompt, "last_logits": logits,
                      "greedy": gen[0, len(prompt):].tolist()})
    with open(os.path.join(out_dir, "expected.json"), "w") as f:
        json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
                   "cases": cases}, f)
    print(name, "saved:", sorted(os.listdir(out_dir)))


def main():
    only = set(sys.argv[2:])
    if only:
        global build
        make = build
        build = lambda name, *a, **k: make(name, *a, **k) if name in only else None
    build("llama_hd64", LlamaForCausalLM,
          LlamaConfig(hidden_size=256, intermediate_size=256, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, head_dim=64, vocab_size=256,
                      max_position_embeddings=512, rms_norm_eps=1e-5, bos_token_id=1,
                      eos_token_id=2, pad_token_id=0, rope_theta=10000.0,
                      tie_word_embeddings=False),
          torch.bfloat16, shard=False)
    build("llama", LlamaForCausalLM,
          LlamaConfig(**COMMON, rope_theta=10000.0, tie_word_embeddings=False,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0,
                                    "original_max_position_embeddings": 64}),
          torch.float32, shard=False)
    build("mistral", MistralForCausalLM,
          MistralConfig(**COMMON, rope_theta=1000000.0, sliding_window=4096,
                        tie_word_embeddings=False),
          torch.bfloat16, shard=True)
    build("qwen2", Qwen2ForCausalLM,
          Qwen2Config(**COMMON, rope_theta=1000000.0, tie_word_embeddings=True),
          torch.float16, shard=False)


if __name__ == "__main__":
    main()
