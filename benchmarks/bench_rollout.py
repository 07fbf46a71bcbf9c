"""Rollout throughput: the rollout engine (vLLM, as rlhf_ray configures it) against transformers
`generate` on the same model, prompts and lengths (every response forced to the same length).

    .venv/bin/python benchmarks/bench_rollout.py [--model smollm2] [--prompts 64] [--new-tokens 64]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, table  # noqa: E402


def prompts_for(tokenizer, n: int) -> list[list[int]]:
    from rlhf_ray.data.chat import chat_texts
    from rlhf_ray.tasks.arithmetic import make_arithmetic_split

    rows, _ = make_arithmetic_split(n, 1, seed=0, max_operand=99)
    texts = chat_texts(tokenizer, [r["prompt"] for r in rows], None, "")
    return [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def bench_vllm(path: str, prompts, new_tokens: int) -> float:
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=path, dtype="float32", enforce_eager=True, max_model_len=512, seed=0,
              kv_cache_memory_bytes=1 << 30, enable_prefix_caching=False)
    params = SamplingParams(temperature=1.0, max_tokens=new_tokens, ignore_eos=True, logprobs=0)
    reqs = [TokensPrompt(prompt_token_ids=p) for p in prompts]
    llm.generate(reqs[:2], params, use_tqdm=False)  # warm-up
    start = time.perf_counter()
    outs = llm.generate(reqs, params, use_tqdm=False)
    seconds = time.perf_counter() - start
    return sum(len(o.outputs[0].token_ids) for o in outs) / seconds


def bench_hf(path: str, prompts, new_tokens: int, batch: int) -> float:
    import torch

    from rlhf_ray.models.loading import load_causal_lm

    model = load_causal_lm(path).eval()
    pad = model.generation_config.eos_token_id
    pad = pad[0] if isinstance(pad, list) else pad
    total, seconds = 0, 0.0
    for i in range(0, len(prompts), batch):
        chunk = prompts[i:i + batch]
        width = max(map(len, chunk))
        ids = torch.tensor([[pad] * (width - len(p)) + p for p in chunk])
        mask = torch.tensor([[0] * (width - len(p)) + [1] * len(p) for p in chunk])
        start = time.perf_counter()
        with torch.no_grad():
            out = model.generate(input_ids=ids, attention_mask=mask, do_sample=True, max_new_tokens=new_tokens,
                                 min_new_tokens=new_tokens, pad_token_id=pad, top_k=0)
        seconds += time.perf_counter() - start
        total += (out.shape[1] - width) * len(chunk)
    return total / seconds


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--new-tokens", type=int, default=64)
    parser.add_argument("--hf-batch", type=int, default=64)
    args = parser.parse_args()

    from rlhf_ray.models.loading import load_tokenizer, resolve_model_path

    path = resolve_model_path(args.model)
    prompts = prompts_for(load_tokenizer(path), args.prompts)
    vllm_tps = bench_vllm(path, prompts, args.new_tokens)
    hf_tps = bench_hf(path, prompts, args.new_tokens, args.hf_batch)
    print(f"machine: {machine()}\nmodel: {path}; {args.prompts} prompts, {args.new_tokens} new tokens each\n")
    print(table([{"engine": "vLLM (rollout role)", "tokens/s": vllm_tps, "vs HF": vllm_tps / hf_tps},
                 {"engine": f"transformers generate (batch {args.hf_batch})", "tokens/s": hf_tps, "vs HF": 1.0}],
                "rollout tokens per second"))


if __name__ == "__main__":
    main()
