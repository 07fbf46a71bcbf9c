"""LoRA against full fine-tuning on the default job: memory per actor, weight-sync bytes and seconds,
seconds per step, checkpoint size, in one run (ratios within it; figures on a shared CPU move ±30%).

    .venv/bin/python benchmarks/bench_lora.py [--steps 2] [--warmup 1] [key=value ...]

Runs ``--warmup + --steps`` PPO steps of configs/ppo_arithmetic.yaml (full fine-tuning) and then of
configs/ppo_arithmetic_lora.yaml (rank-16 adapters on learner and critic, the reference read from the
learner's base) twice, once per LoRA sync (merged touched layers; the adapter served by vLLM's LoRA),
through the real controller and actors, and saves one checkpoint of each. Peak memory is each actor's own (`Worker.peak_memory_gib`: the process's peak
resident set on CPU, the GPU's allocated peak on GPU). The held-out accuracy curves come from the
full runs of both configs (docs/methods/lora.md).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, table  # noqa: E402

LORA = "configs/ppo_arithmetic_lora.yaml"
VARIANTS = {  # name → (config, overrides)
    "full fine-tuning": ("configs/ppo_arithmetic.yaml", []),
    "LoRA, merged sync": (LORA, ["sync.lora=merged"]),  # what sync.lora=auto picks for engines on CPU
    "LoRA, adapter sync": (LORA, ["sync.lora=adapter"]),  # what it picks for engines on GPU
}


def folder_bytes(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def run(config: str, steps: int, warmup: int, overrides: list[str], run_dir: Path) -> dict:
    from rlhf_ray.config.loading import load_config
    from rlhf_ray.roles.base import Worker
    from rlhf_ray.roles.ds_worker import DeepSpeedWorker
    from rlhf_ray.trainers.ppo import PPOTrainer

    shutil.rmtree(run_dir, ignore_errors=True)
    cfg = load_config(config, ["logging.wandb_mode=disabled", "logging.ray_metrics=false", "logging.progress_bar=false",
                               f"trainer.run_dir={run_dir}", "trainer.save_hf=false", *overrides])
    trainer = PPOTrainer.from_config(cfg)
    try:
        counts = trainer.learner.get(trainer.learner.call(DeepSpeedWorker.parameter_counts))[0]
        rows = []
        for step in range(1, warmup + steps + 1):
            metrics = trainer.step(step)
            if step > warmup:
                rows.append(metrics)
        ckpt = Path(trainer.save_checkpoint(warmup + steps, {}))
        peaks = {role: max(g.get(g.call(Worker.peak_memory_gib))) for role, g in trainer.groups.items()}
        counts = trainer.learner.get(trainer.learner.call(DeepSpeedWorker.parameter_counts))[0]
    finally:
        trainer.shutdown()

    def mean(key):
        return sum(r[key] for r in rows) / len(rows)

    return {"rows": rows, "peaks": peaks, "counts": counts, "mean": mean,
            "ckpt_learner_mb": folder_bytes(ckpt / "learner") / 1e6, "ckpt_critic_mb": folder_bytes(ckpt / "critic") / 1e6}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    results = {}
    for i, (name, (config, extra)) in enumerate(VARIANTS.items()):
        start = time.perf_counter()
        results[name] = run(config, args.steps, args.warmup, [*extra, *args.overrides], Path(f"runs/bench_lora/{i}"))
        print(f"[bench] {name}: {time.perf_counter() - start:.0f}s", flush=True)
    rows = []
    for name, r in results.items():
        m = r["mean"]
        rows.append({"": name, "trained params": r["counts"]["trainable"], "optimizer elements": r["counts"]["in_optimizer"],
                     "learner peak GiB": r["peaks"]["learner"], "critic peak GiB": r["peaks"]["critic"],
                     "reference peak GiB": r["peaks"].get("reference", 0.0), "rollout peak GiB": r["peaks"]["rollout"],
                     "all actors GiB": sum(r["peaks"].values()),
                     "sync MB": m("sync/bytes") / 1e6, "sync s": m("sync/seconds"), "step s": m("time/step"),
                     "generate s": m("time/generate"), "score s": m("time/score"), "update s": m("time/update"),
                     "ckpt learner MB": r["ckpt_learner_mb"], "ckpt critic MB": r["ckpt_critic_mb"]})
    ratios = [{"": f"{row['']} / full", **{k: row[k] / rows[0][k] if rows[0][k] else float("nan") for k in row if k}}
              for row in rows[1:]]
    print(f"machine: {machine()}\nsteps: {args.steps} after {args.warmup} warm-up; overrides: {' '.join(args.overrides)}\n")
    print(table(rows + ratios, "LoRA against full fine-tuning, default PPO job (per step: means over the timed steps)"))
    print("log-prob gap (rollout vs learner, mean): " + ", ".join(
        f"{name} {r['mean']('check/logprob_gap_mean'):.2g}" for name, r in results.items()))


if __name__ == "__main__":
    main()
