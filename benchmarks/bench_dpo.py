"""DPO training throughput side by side with TRL (issue 6): rlhf_ray's OfflineTrainer, a plain
single-process PyTorch loop and TRL's DPOTrainer, on the same model, token ids, batches, lengths,
optimiser settings and threads.

    bash scripts/setup_bench_env.sh     # once: TRL goes into .venv-bench, never into .venv
    .venv/bin/python benchmarks/bench_dpo.py [--model smollm2] [--steps 40] [--warmup 3] [--pairs 4]
        [--max-length 256] [--threads 2] [--reference per_step|precompute] [--contenders plain,plain_keep_freed,rlhf_ray,trl]
        [--set key=value ...]

The HH pairs are tokenised once, by rlhf_ray's own offline data code, and the steps' batches drawn
by its seeded sampler; every contender gets those ids in that order (rlhf_ray's trainer tokenises
the file itself and is checked to agree). Each contender runs in a fresh process, one after the
other. Printed: pairs/s over the steps after the warm-up, the ratios the targets name (rlhf_ray
≥ 1.0× plain, ≥ 1.3× TRL), tokens/s, and achieved FLOP/s as a share of the machine's measured fp32
matmul peak on the same threads.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, table

REPO = Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared/data/hh-rlhf/harmless_pairs.jsonl.gz"
BENCH_PYTHON = REPO / ".venv-bench/bin/python"  # made by scripts/setup_bench_env.sh
CONTENDERS = ("plain", "plain_keep_freed", "rlhf_ray", "trl")


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--contenders", default=",".join(CONTENDERS), help="comma-separated subset of " + ",".join(CONTENDERS))
    p.add_argument("--model", default="smollm2", help="HF causal-LM folder, or smollm2")
    p.add_argument("--data", default=str(DEFAULT_DATA), help="HH-RLHF pairs file (chosen/rejected dialogues)")
    p.add_argument("--steps", type=int, default=40, help="timed optimiser steps")
    p.add_argument("--warmup", type=int, default=3, help="untimed optimiser steps before them")
    p.add_argument("--pairs", type=int, default=4, help="pairs per optimiser step")
    p.add_argument("--micro", type=int, default=None, help="pairs per forward/backward (default: --pairs)")
    p.add_argument("--max-length", type=int, default=256, help="prompt + response tokens")
    p.add_argument("--max-prompt-tokens", type=int, default=None, help="default: half of --max-length")
    p.add_argument("--threads", type=int, default=os.cpu_count(), help="torch threads of every contender")
    p.add_argument("--reference", choices=("per_step", "precompute"), default="per_step",
                   help="reference log-probs: a forward inside every step, or all scored before training")
    p.add_argument("--lr", type=float, default=5e-6)
    p.add_argument("--beta", type=float, default=0.1)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--peak-size", type=int, default=2048, help="side of the square fp32 matmul that measures peak")
    p.add_argument("--set", nargs="*", default=[], metavar="KEY=VALUE",
                   help="extra rlhf_ray config overrides, e.g. model.sequence_packing=off")
    p.add_argument("--logs", default=None, help="keep the spec and each contender's log and result in this folder")
    args = p.parse_args()
    args.micro = args.micro or args.pairs
    args.max_prompt_tokens = args.max_prompt_tokens or args.max_length // 2
    args.contenders = [c.strip() for c in args.contenders.split(",") if c.strip()]
    bad = [c for c in args.contenders if c not in CONTENDERS]
    if bad or args.pairs % args.micro:
        p.error(f"unknown contenders {bad}" if bad else "--pairs must be a multiple of --micro")
    return args


def rlhf_ray_overrides(args, model: str) -> list[str]:
    """The config every contender's settings come from: rlhf_ray's trainer runs exactly this."""
    return ["algorithm=dpo", f"model.path={model}", f"offline.train_file={os.path.abspath(args.data)}",
            "offline.format=hh", "offline.eval_fraction=0", f"offline.max_length={args.max_length}",
            f"offline.max_prompt_tokens={args.max_prompt_tokens}", "offline.truncation=truncate",
            f"offline.batch_samples_global={args.pairs}", f"offline.max_steps={args.warmup + args.steps}",
            f"offline.beta={args.beta}", "offline.save_final=false",
            "offline.reference_logprobs=" + ("precompute" if args.reference == "precompute" else "per_batch"),
            f"learner.lr={args.lr}", f"learner.micro_batch_samples_per_actor={args.micro}",
            f"reference.micro_batch_samples_per_actor={2 * args.micro}",  # rows: the learner's micro-batch
            f"learner.torch_threads={args.threads}", f"reference.torch_threads={args.threads}",
            f"trainer.seed={args.seed}", "ray.local_dashboard=false", "logging.wandb_mode=disabled",
            "logging.progress_bar=false", "logging.ray_metrics=false", *args.set]


def make_spec(args) -> tuple[dict, list[int]]:
    """(spec for the contenders, real tokens of each step: prompt + response of both rows of each pair)."""
    from rlhf_ray.config.loading import load_config
    from rlhf_ray.data import load_offline_data
    from rlhf_ray.data.prompts import PromptSampler
    from rlhf_ray.models.loading import load_tokenizer, resolve_model_path

    model = resolve_model_path(args.model)
    overrides = rlhf_ray_overrides(args, model)
    cfg = load_config(overrides=overrides)
    train, _ = load_offline_data(cfg, load_tokenizer(model))
    sampler = PromptSampler(len(train.units), cfg.trainer.seed)  # the trainer's own sampler and seed
    batches = [[{"index": i, "prompt": train.units[i].prompt, "chosen": train.units[i].responses[0],
                 "rejected": train.units[i].responses[1]} for i in sampler.next(args.pairs)]
               for _ in range(args.warmup + args.steps)]
    tokens = [sum(2 * len(u["prompt"]) + len(u["chosen"]) + len(u["rejected"]) for u in b) for b in batches]
    learner = cfg.learner
    spec = {"model": model, "threads": args.threads, "seed": args.seed, "lr": args.lr, "beta": args.beta,
            "adam_betas": list(learner.adam_betas), "max_grad_norm": learner.max_grad_norm, "micro": args.micro,
            "max_length": args.max_length, "reference": args.reference, "batches": batches,
            "rlhf_ray_overrides": overrides, "data": train.describe()}
    return spec, tokens


def matmul_peak(threads: int, n: int, repeats: int = 5) -> float:
    """FLOP/s of the best of ``repeats`` n×n fp32 matmuls on ``threads`` torch threads."""
    import torch

    torch.set_num_threads(threads)
    a, b = torch.randn(n, n), torch.randn(n, n)
    torch.mm(a, b)  # warm-up: thread pool, caches
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        torch.mm(a, b)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def param_count(model: str) -> int:
    """Parameters of the model (a tied embedding counted once), without loading weights."""
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM

    with torch.device("meta"):
        m = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(model))
    return sum(p.numel() for p in m.parameters())


def trl_missing() -> str | None:
    if not BENCH_PYTHON.exists():
        return "not installed, run scripts/setup_bench_env.sh"
    ok = subprocess.run([str(BENCH_PYTHON), "-c", "import trl"], capture_output=True, check=False).returncode == 0
    return None if ok else "trl does not import in .venv-bench, run scripts/setup_bench_env.sh"


def run_contender(name: str, spec_path: str, work: str, threads: int) -> dict:
    python = str(BENCH_PYTHON) if name == "trl" else sys.executable
    result, log = os.path.join(work, f"{name}.json"), os.path.join(work, f"{name}.log")
    env = {**os.environ, "OMP_NUM_THREADS": str(threads), "MKL_NUM_THREADS": str(threads),
           "TOKENIZERS_PARALLELISM": "false", "PYTHONUNBUFFERED": "1"}
    if name == "plain_keep_freed":  # the plain loop with the malloc settings rlhf_ray's CPU actors get
        from rlhf_ray.cluster.groups import KEEP_FREED_MEMORY

        env.update(KEEP_FREED_MEMORY)
    start = time.perf_counter()
    with open(log, "w") as out:
        rc = subprocess.run([python, str(REPO / "benchmarks/dpo_contenders.py"), name, spec_path, result],
                            cwd=REPO, env=env, stdout=out, stderr=subprocess.STDOUT, check=False).returncode
    print(f"[bench] {name}: {'done' if rc == 0 else f'FAILED (exit {rc})'} in {time.perf_counter() - start:.0f}s",
          file=sys.stderr, flush=True)
    if rc:
        with open(log) as f:
            tail = f.read()[-3000:]
        return {"error": f"exit {rc}; last lines of its log:\n{tail}"}
    with open(result) as f:
        return json.load(f)


def main() -> None:
    args = parse_args()
    spec, tokens = make_spec(args)
    n_params = param_count(spec["model"])
    peak = matmul_peak(args.threads, args.peak_size)
    print(f"machine: {machine()}")
    print(f"model: {spec['model']} ({n_params / 1e6:.1f}M parameters), fp32; data: {spec['data']}")
    print(f"{args.pairs} pairs a step ({args.micro} per forward/backward), max length {args.max_length} "
          f"(prompt ≤ {args.max_prompt_tokens}), {args.warmup} warm-up + {args.steps} timed steps, "
          f"{args.threads} threads, reference {args.reference}, AdamW lr {args.lr}, β {args.beta}")
    print(f"measured fp32 matmul peak ({args.peak_size}², {args.threads} threads): {peak / 1e9:.1f} GFLOP/s\n")

    results, skipped = {}, {}
    with tempfile.TemporaryDirectory(prefix="bench_dpo_") as tmp:
        work = args.logs or tmp
        os.makedirs(work, exist_ok=True)
        spec_path = os.path.join(work, "spec.json")
        with open(spec_path, "w") as f:
            json.dump(spec, f)
        for name in args.contenders:
            missing = trl_missing() if name == "trl" else None
            out = {"error": missing} if missing else run_contender(name, spec_path, work, args.threads)
            if "error" not in out and len(out["step_s"]) != len(tokens):
                out = {"error": f"reported {len(out['step_s'])} steps, expected {len(tokens)}"}
            (skipped if "error" in out else results)[name] = out

    timed_tokens = sum(tokens[args.warmup:])
    rate = {n: args.pairs * args.steps / sum(r["step_s"][args.warmup:]) for n, r in results.items()}
    rows = []
    for name, r in results.items():
        tok_s = timed_tokens / sum(r["step_s"][args.warmup:])
        rows.append({"contender": name, "pairs/s": rate[name],
                     "× plain": rate[name] / rate["plain"] if "plain" in rate else "-",
                     "× trl": rate[name] / rate["trl"] if "trl" in rate else "-",
                     "tokens/s": tok_s, "GFLOP/s (6N)": 6 * n_params * tok_s / 1e9,
                     "% of peak": 100 * 6 * n_params * tok_s / peak,
                     "ref precompute s": r["ref_precompute_s"] if r["ref_precompute_s"] is not None else "-",
                     "loss (last step)": r["loss"][-1] if r["loss"] and r["loss"][-1] is not None else "-"})
    if rows:
        print(table(rows, "DPO training throughput, same ids, batches and settings"))
    for name, r in skipped.items():
        print(f"{name}: {r['error']}")
    notes(args, results, rate, tokens)


def notes(args, results: dict, rate: dict, tokens: list[int]) -> None:
    print(f"tokens: real (unpadded) prompt + response tokens of both rows of each pair, "
          f"{sum(tokens[args.warmup:]) / args.steps:.0f} a step on average.")
    print("FLOP/s: 6 × N × tokens/s, N = every parameter (a tied embedding once): the policy's forward and "
          "backward, the usual model-FLOPs convention (rlhf_ray and the plain loop run the LM head on response "
          "positions only, so they execute fewer)." + (" The per-step reference forward (2 × N a token) is timed but not counted: "
                                   "× 4/3 includes it." if args.reference == "per_step" else
                                   " Reference precompute is not in the step times (its seconds are listed)."))
    detail = results.get("rlhf_ray", {}).get("detail")
    if detail:
        print("rlhf_ray, mean seconds a step: " + ", ".join(f"{k} {v:.3g}" for k, v in detail.items()))
    if "rlhf_ray" in rate:
        parts = [f"{rate['rlhf_ray'] / rate[k]:.2f}× {k} (target ≥ {t})" for k, t in (("plain", 1.0), ("trl", 1.3))
                 if k in rate]
        if parts:
            print("rlhf_ray: " + ", ".join(parts))


if __name__ == "__main__":
    main()
