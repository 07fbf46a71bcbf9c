"""PPO step breakdown and orchestration overhead, optionally against a single-process loop.

Runs real PPO steps of a config through rlhf_ray's controller and actors, then reads Ray's task
timeline: every actor method's execution span (`task:execute`) is known to the microsecond. For each
step, the union of those spans over all actors is the time something computed inside an actor;
the rest of the step's wall time is orchestration (scheduling, argument transfer, serialisation,
the controller's own bookkeeping). Argument (de)serialisation inside actors is reported beside it.

    .venv/bin/python benchmarks/bench_ppo_step.py [--config configs/ppo_arithmetic.yaml] [--steps 3]
        [--warmup 1] [--single-process [--keep-freed]] [key=value ...]

``--single-process`` also runs benchmarks/ppo_single_process.py's loop (same models, batch and
maths in one process, no Ray) and prints the step-time ratio (target ≤ 1.05); ``--keep-freed`` gives
that loop the malloc settings rlhf_ray's CPU actors run with (`ray.cpu_malloc_keep_freed`).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, table  # noqa: E402

ROLE_OF_CLASS = {"Rollout": "rollout", "PolicyLearner": "learner", "Critic": "critic", "Reference": "reference",
                 "Reward": "reward"}
STAGES = ("generate", "score", "advantages", "update", "generate_wait", "sync", "critic_wait")


def union_seconds(spans: list[tuple[float, float]]) -> float:
    """Length of the union of [start, end) intervals (seconds)."""
    total, cur_start, cur_end = 0.0, None, None
    for s, e in sorted(spans):
        if cur_end is None or s > cur_end:
            if cur_end is not None:
                total += cur_end - cur_start
            cur_start, cur_end = s, e
        else:
            cur_end = max(cur_end, e)
    return total + (cur_end - cur_start if cur_end is not None else 0.0)


def clip(spans, lo: float, hi: float) -> list[tuple[float, float]]:
    return [(max(s, lo), min(e, hi)) for s, e in spans if e > lo and s < hi]


def actor_spans(timeline: list[dict]) -> dict[str, dict[str, list[tuple[float, float]]]]:
    """role → {"execute": spans, "transfer": spans} in seconds since the epoch.

    A method's `task::Class.method` event carries the class; the `task:execute` and argument
    (de)serialisation events of the same worker inside it are attributed to that class's role."""
    by_worker: dict[str, list[dict]] = {}
    for e in timeline:
        if e.get("ph") == "X":
            by_worker.setdefault(e["tid"], []).append(e)
    out: dict[str, dict[str, list]] = {}
    for events in by_worker.values():
        tasks = [e for e in events if e["cat"].startswith("task::")]
        for t in tasks:
            role = ROLE_OF_CLASS.get(t["cat"][len("task::"):].split(".")[0])
            if role is None:
                continue
            lo, hi = t["ts"], t["ts"] + t["dur"]
            for e in events:
                if lo <= e["ts"] <= hi:
                    kind = {"task:execute": "execute", "task:deserialize_arguments": "transfer",
                            "task:store_outputs": "transfer"}.get(e["cat"])
                    if kind:
                        out.setdefault(role, {"execute": [], "transfer": []})[kind].append(
                            (e["ts"] / 1e6, (e["ts"] + e["dur"]) / 1e6))
    return out


def run_rlhf_ray(cfg, steps: int, warmup: int) -> list[dict]:
    import ray

    from rlhf_ray.trainers.ppo import PPOTrainer

    trainer = PPOTrainer.from_config(cfg)
    try:
        windows, rows = [], []
        for step in range(1, warmup + steps + 1):
            start = time.time()
            metrics = trainer.step(step)
            if step > warmup:
                windows.append((start, time.time()))
                rows.append({f"time/{s}": metrics[f"time/{s}"] for s in STAGES})
        time.sleep(3.0)  # task events reach the GCS on a timer
        spans = actor_spans(ray.timeline())
    finally:
        trainer.shutdown()
    for row, (lo, hi) in zip(rows, windows):
        execute = [s for r in spans.values() for s in clip(r["execute"], lo, hi)]
        transfer = [s for r in spans.values() for s in clip(r["transfer"], lo, hi)]
        row.update({"wall": hi - lo, "busy": union_seconds(execute), "transfer": union_seconds(transfer)})
        row["overhead"] = row["wall"] - row["busy"]
        for role, r in spans.items():
            row[f"busy/{role}"] = union_seconds(clip(r["execute"], lo, hi))
    return rows


def mean(rows: list[dict], key: str) -> float:
    return sum(r[key] for r in rows) / len(rows)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--config", default="configs/ppo_arithmetic.yaml")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--single-process", action="store_true")
    parser.add_argument("--keep-freed", action="store_true",
                        help="give the single-process loop the malloc settings of rlhf_ray's CPU actors "
                             "(ray.cpu_malloc_keep_freed) by re-running this script with them")
    parser.add_argument("overrides", nargs="*")
    args = parser.parse_args()
    from rlhf_ray.cluster.groups import KEEP_FREED_MEMORY

    if args.keep_freed and any(os.environ.get(k) != v for k, v in KEEP_FREED_MEMORY.items()):
        os.execve(sys.executable, [sys.executable, *sys.argv], {**os.environ, **KEEP_FREED_MEMORY})
    malloc = "keep-freed" if all(os.environ.get(k) == v for k, v in KEEP_FREED_MEMORY.items()) else "glibc default"

    from rlhf_ray.config.loading import load_config

    overrides = ["logging.wandb_mode=disabled", "logging.ray_metrics=false", "logging.progress_bar=false",
                 "trainer.run_dir=runs/bench_ppo_step", *args.overrides]
    cfg = load_config(args.config, overrides)
    rows = run_rlhf_ray(cfg, args.steps, args.warmup)
    per_step = [{"step": i + 1, "wall s": r["wall"], **{s: r[f"time/{s}"] for s in STAGES},
                 "in actors s": r["busy"], "orchestration s": r["overhead"],
                 "orchestration %": 100 * r["overhead"] / r["wall"], "arg transfer s": r["transfer"]}
                for i, r in enumerate(rows)]
    roles = sorted(k for k in rows[0] if k.startswith("busy/"))
    busy = [{"role": k.split("/")[1], "busy s per step": mean(rows, k),
             "share of step %": 100 * mean(rows, k) / mean(rows, "wall")} for k in roles]
    print(f"machine: {machine()}\nconfig: {args.config} {' '.join(args.overrides)}\n")
    print(table(per_step, "rlhf_ray PPO step: stage seconds and orchestration overhead"))
    print(table(busy, "time each role computed, per step (parallel roles overlap)"))
    if args.single_process:
        from ppo_single_process import run_single_process

        single = run_single_process(cfg, args.steps, args.warmup)
        ours, theirs = mean(rows, "wall"), mean(single, "time/step")
        print(table([{"loop": "rlhf_ray (Ray actors)", "step s": ours, "ratio": ours / theirs},
                     {"loop": "single process, no Ray", "step s": theirs, "ratio": 1.0}],
                    "PPO step time against a single-process loop (target ratio ≤ 1.05)"))
        print(f"single-process loop's malloc: {malloc} (rlhf_ray's CPU actors: "
              f"{'keep-freed' if cfg.ray.cpu_malloc_keep_freed else 'glibc default'})")


if __name__ == "__main__":
    main()
