"""GPU roofline check: rollout decode tokens/s against the memory-bandwidth limit, and learner
model FLOPs utilisation (MFU), on a Llama-architecture model of real size built from a config with
random weights (no download, no tokenizer). Needs only torch + transformers; vLLM is measured too
if it happens to be importable.

    python benchmarks/bench_gpu.py --preset llama-1b [--compile] [--grad-ckpt] [--peak-tflops 989]
    python benchmarks/bench_gpu.py --preset tiny --batches 1 4 --new-tokens 16 --seq-len 128  # CPU smoke test

It measures, in order:
- the machine: memory bandwidth (a large device-to-device copy, bytes read + written per second)
  and matmul peak (best of N square GEMMs: bf16 8192² on GPU, fp32 1024² on CPU);
- rollout: transformers `generate` (static KV cache; `--compile` lets transformers compile the
  decode step, without it small models are kernel-launch bound) at each --batches size, random
  prompts of --prompt-len tokens, exactly --new-tokens sampled tokens per row. "decode tok/s"
  subtracts a 1-token (prefill only) call on the same batch. A decode step reads every weight
  once, so it cannot beat batch × bandwidth ÷ weight bytes; the bound ignores KV-cache reads, so it
  is optimistic at long contexts. The compute bound (matmul peak ÷ 2N per token) is shown too;
- learner: forward + backward + AdamW step at --train-batch × --seq-len, tokens/s, achieved
  FLOP/s = 6N × tokens/s, MFU = that ÷ the measured matmul peak (and ÷ --peak-tflops, the
  datasheet figure, if given).

N counts every parameter except the input embedding, with the LM head counted even when tied (the
usual convention: the embedding lookup is a gather, the head is a matmul). The same N × bytes per
parameter is the weight traffic of a decode step. 6N leaves out attention-score FLOPs (their share
is printed) and, with --grad-ckpt, the recomputed forward.
"""

from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import tempfile
import time
from functools import partial

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, table

# hidden, layers, heads, kv heads, intermediate, vocab, tied embeddings
PRESETS = {
    "tiny": (64, 2, 4, 2, 128, 1024, True),
    "smollm2-135m": (576, 30, 9, 3, 1536, 49152, True),
    "qwen-0.5b": (896, 24, 14, 2, 4864, 151936, True),  # Qwen2.5-0.5B shapes in Llama blocks (no qkv bias)
    "llama-1b": (2048, 16, 32, 8, 8192, 128256, True),  # Llama-3.2-1B
    "llama-3b": (3072, 28, 24, 8, 8192, 128256, True),  # Llama-3.2-3B
}


def build(preset: str, device: str, dtype: torch.dtype, max_len: int):
    from transformers import LlamaConfig, LlamaForCausalLM

    hidden, layers, heads, kv, inter, vocab, tied = PRESETS[preset]
    cfg = LlamaConfig(hidden_size=hidden, num_hidden_layers=layers, num_attention_heads=heads,
                      num_key_value_heads=kv, intermediate_size=inter, vocab_size=vocab,
                      tie_word_embeddings=tied, max_position_embeddings=max_len,
                      bos_token_id=1, eos_token_id=2, pad_token_id=0)
    torch.manual_seed(0)
    # Initialise straight into the target dtype on the device: a 3B model in fp32 on the host is slow.
    torch.set_default_dtype(dtype)
    try:
        with torch.device(device):
            model = LlamaForCausalLM(cfg)
    finally:
        torch.set_default_dtype(torch.float32)
    return model.to(device, dtype)


def counted_params(model) -> int:
    emb, head = model.get_input_embeddings().weight, model.get_output_embeddings().weight
    n = sum(p.numel() for p in model.parameters()) - emb.numel()
    return n + head.numel() if head is emb else n  # a tied head is listed once, as the embedding


def sync(device: str) -> None:
    if device == "cuda":
        torch.cuda.synchronize()


def best_time(fn, device: str, reps: int, warmup: int = 1) -> float:
    for _ in range(warmup):
        fn()
    sync(device)
    best = float("inf")
    for _ in range(reps):
        start = time.perf_counter()
        fn()
        sync(device)
        best = min(best, time.perf_counter() - start)
    return best


def measure_machine(device: str, dtype: torch.dtype) -> tuple[float, float, int]:
    cuda = device == "cuda"
    nbytes = (1 << 30) if cuda else (64 << 20)  # far beyond any cache
    src = torch.empty(nbytes, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    reps = 10 if cuda else 3
    bandwidth = 2 * nbytes / best_time(lambda: dst.copy_(src), device, reps, warmup=3)
    n = 8192 if cuda else 1024
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    peak = 2 * n ** 3 / best_time(lambda: a @ b, device, reps, warmup=3)
    return bandwidth, peak, n


def rollout_row(engine: str, cache: str, run, batch: int, args, device: str, bounds) -> dict:
    full = best_time(lambda: run(args.new_tokens), device, reps=2)
    prefill = best_time(lambda: run(1), device, reps=2)
    decode = batch * (args.new_tokens - 1) / max(full - prefill, 1e-9)
    bw_bound, compute_bound = batch * bounds[0], bounds[1]
    return {"engine": engine, "cache": cache, "batch": batch, "tokens/s": batch * args.new_tokens / full,
            "decode tok/s": decode, "bw bound": bw_bound, "compute bound": compute_bound,
            "decode ÷ bound": decode / min(bw_bound, compute_bound)}


def hf_generate(model, ids, gen: dict, n: int) -> None:
    model.generate(input_ids=ids, attention_mask=torch.ones_like(ids), do_sample=True, top_k=0,
                   max_new_tokens=n, min_new_tokens=n, pad_token_id=0, **gen)


def bench_hf_rollout(model, args, device: str, bounds) -> list[dict]:
    model.eval()
    gen = {"cache_implementation": "static", "disable_compile": not args.compile}
    rows = []
    for batch in args.batches:
        ids = torch.randint(3, model.config.vocab_size, (batch, args.prompt_len), device=device)
        try:
            run = partial(hf_generate, model, ids, gen)
            rows.append(rollout_row("transformers", "static" if gen else "dynamic", run, batch, args, device, bounds))
        except Exception as e:  # an older transformers, or a model/cache combination it cannot compile
            if not gen:
                raise
            print(f"static KV cache failed ({type(e).__name__}: {e}); using the default cache\n")
            gen = {}
            run = partial(hf_generate, model, ids, gen)
            rows.append(rollout_row("transformers", "dynamic", run, batch, args, device, bounds))
    return rows


def bench_vllm_rollout(path: str, args, vocab: int, bounds) -> list[dict]:
    os.environ.setdefault("VLLM_ENABLE_V1_MULTIPROCESSING", "0")  # in this process, like a rollout actor
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt

    llm = LLM(model=path, dtype="bfloat16", skip_tokenizer_init=True, seed=0, gpu_memory_utilization=0.5,
              max_model_len=args.prompt_len + args.new_tokens, enable_prefix_caching=False)
    gen = torch.Generator().manual_seed(0)
    rows = []
    for batch in args.batches:
        prompts = [TokensPrompt(prompt_token_ids=torch.randint(3, vocab, (args.prompt_len,), generator=gen).tolist())
                   for _ in range(batch)]

        def run(n, prompts=prompts):
            params = SamplingParams(temperature=1.0, max_tokens=n, min_tokens=n, ignore_eos=True)
            llm.generate(prompts, params, use_tqdm=False)
        rows.append(rollout_row("vllm", "paged", run, batch, args, "cuda", bounds))
    return rows


def bench_learner(model, args, device: str, n_params: int, peak: float) -> dict:
    model.train()
    model.config.use_cache = False
    if args.grad_ckpt:
        model.gradient_checkpointing_enable()
    # bf16 weights and AdamW state on GPU; a DeepSpeed learner keeps fp32 master weights too, but
    # runs the same bf16 matmuls, which are what MFU is about.
    opt = torch.optim.AdamW(model.parameters(), lr=1e-5, fused=device == "cuda")
    ids = torch.randint(3, model.config.vocab_size, (args.train_batch, args.seq_len), device=device)

    def step():
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)
    if device == "cuda":
        torch.cuda.reset_peak_memory_stats()
    for _ in range(2):
        step()
    sync(device)
    start = time.perf_counter()
    for _ in range(args.train_steps):
        step()
    sync(device)
    seconds = (time.perf_counter() - start) / args.train_steps
    tokens = args.train_batch * args.seq_len / seconds
    achieved = 6 * n_params * tokens
    row = {"batch × seq": f"{args.train_batch}×{args.seq_len}", "grad ckpt": args.grad_ckpt,
           "step s": seconds, "tokens/s": tokens, "TFLOP/s (6N)": achieved / 1e12,
           "MFU (measured peak)": achieved / peak}
    if args.peak_tflops:
        row["MFU (datasheet)"] = achieved / (args.peak_tflops * 1e12)
    if device == "cuda":
        row["peak mem GiB"] = torch.cuda.max_memory_allocated() / 2 ** 30
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--preset", default="llama-1b", choices=list(PRESETS))
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32, 64])
    parser.add_argument("--prompt-len", type=int, default=128)
    parser.add_argument("--new-tokens", type=int, default=128)
    parser.add_argument("--compile", action="store_true", help="compile the decode step (transformers)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--seq-len", type=int, default=1024)
    parser.add_argument("--train-steps", type=int, default=5)
    parser.add_argument("--grad-ckpt", action="store_true")
    parser.add_argument("--peak-tflops", type=float, help="datasheet dense bf16 peak, e.g. 989 for H100 SXM")
    args = parser.parse_args()

    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" else torch.float32
    print(machine(), "\n")
    bandwidth, peak, n = measure_machine(device, dtype)
    print(table([{"memory bandwidth GB/s": bandwidth / 1e9, f"matmul {n}² TFLOP/s": peak / 1e12,
                  "dtype": str(dtype).removeprefix("torch.")}], f"Machine ({device})"))

    max_len = max(args.prompt_len + args.new_tokens, args.seq_len)
    model = build(args.preset, device, dtype, max_len)
    n_params = counted_params(model)
    weight_bytes = n_params * model.get_output_embeddings().weight.element_size()
    cfg = model.config
    print(f"{args.preset}: {n_params / 1e6:.3g}M counted parameters (all but the input embedding, head "
          f"counted), {weight_bytes / 1e9:.3g} GB of weights read per decode step\n")

    bounds = (bandwidth / weight_bytes, peak / (2 * n_params))
    rows = bench_hf_rollout(model, args, device, bounds)
    print(table(rows, f"Rollout: {args.prompt_len}-token prompts, {args.new_tokens} new tokens per row"))
    print("bw bound = batch × bandwidth ÷ weight bytes (KV-cache reads ignored); compute bound = matmul peak"
          " ÷ 2N; decode ÷ bound uses the smaller.\n")

    vllm_path = None
    if device == "cuda" and importlib.util.find_spec("vllm"):
        vllm_path = tempfile.mkdtemp(prefix="bench_gpu_")
        model.save_pretrained(vllm_path)  # vLLM loads from a folder; it runs last as it keeps its memory
    del model
    if device == "cuda":
        torch.cuda.empty_cache()

    model = build(args.preset, device, dtype, max_len)
    row = bench_learner(model, args, device, n_params, peak)
    print(table([row], f"Learner: forward + backward + AdamW, {str(dtype).removeprefix('torch.')}"))
    attention = 12 * cfg.num_hidden_layers * cfg.hidden_size * args.seq_len / (6 * n_params)
    recompute = "; nor is the checkpointing recompute" if args.grad_ckpt else ""
    print(f"6N per token with N = {n_params / 1e6:.3g}M; attention scores (12·layers·hidden·seq per token) "
          f"would add {attention:.1%}, not counted{recompute}.\n")
    del model, row

    if vllm_path:
        torch.cuda.empty_cache()
        print(table(bench_vllm_rollout(vllm_path, args, cfg.vocab_size, bounds), "Rollout: vLLM, same settings"))


if __name__ == "__main__":
    main()
