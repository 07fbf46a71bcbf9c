"""Engine idle time of multi-turn rollouts: continuous scheduling against turn-by-turn lockstep.

One rollout engine (vLLM, as rlhf_ray configures it) and one environment actor whose every call
takes a random 50-500 ms (rlhf_ray.envs.latency, seeded per prompt: both modes wait the same
times); each trajectory runs ``--turns`` turns. Lockstep generates every trajectory's turn k, then
waits for every environment call, then turn k+1: the engine idles while the slowest call of each
turn runs. Continuous sends a trajectory's next turn as soon as its environment answers. Per row:
wall seconds of the generation, seconds the engine stepped, seconds it had nothing to run while
trajectories waited for their environments, and tokens generated per wall second.

    .venv/bin/python benchmarks/bench_multiturn.py [--model smollm2] [--prompts 32] [--turns 3] [--repeats 2]
"""

from __future__ import annotations

import argparse
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, table  # noqa: E402


def run_mode(model: str, scheduling: str, args) -> list[dict]:
    from rlhf_ray.cluster.groups import WorkerGroup
    from rlhf_ray.config.loading import load_config
    from rlhf_ray.data.prompts import encode_prompts
    from rlhf_ray.models.loading import load_tokenizer, resolve_model_path
    from rlhf_ray.roles import EnvHost, Rollout
    from rlhf_ray.tasks.arithmetic import make_arithmetic_split

    path = resolve_model_path(model)
    cfg = load_config(overrides=[
        f"model.path={path}", "algorithm=grpo", "reward.kind=env", "env.environment=rlhf_ray.envs.latency:LatencyEnvironment",
        f"env.kwargs={{min_s: {args.min_s}, max_s: {args.max_s}, turns: {args.turns}}}", f"env.max_turns={args.turns}",
        f"env.max_total_tokens={args.turns * (args.new_tokens + 16)}", f"rollout.max_new_tokens={args.new_tokens}",
        f"env.scheduling={scheduling}", "logging.wandb_mode=disabled"])
    rows, _ = make_arithmetic_split(args.prompts, 1, seed=0, max_operand=99)
    prompts = encode_prompts(load_tokenizer(path), rows, cfg, "bench").ids
    rollout, env = WorkerGroup("rollout", Rollout, cfg), WorkerGroup("env", EnvHost, cfg)
    try:
        rollout.get(rollout.call(Rollout.init_model, path))
        env.get(env.call(EnvHost.init_model, None))
        out = []
        for r in range(args.repeats + 1):
            res = rollout.get([rollout.actors[0].generate_trajectories.remote(rows, prompts, env.actors, False, 0, f"b{r}")])[0]
            if r == 0:
                continue  # warm-up
            tokens = sum(sum(m) for m in res["policy_mask"])
            out.append({"scheduling": scheduling, "repeat": r, "wall_s": res["wall_s"], "engine_busy_s": res["engine_busy_s"],
                        "engine_idle_s": res["engine_idle_s"], "idle_frac": res["engine_idle_s"] / res["wall_s"],
                        "turns_mean": sum(res["turns"]) / len(rows), "gen_tokens_per_s": tokens / res["wall_s"]})
        return out
    finally:
        rollout.kill()
        env.kill()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="smollm2")
    ap.add_argument("--prompts", type=int, default=32)
    ap.add_argument("--turns", type=int, default=3)
    ap.add_argument("--new-tokens", type=int, default=32)
    ap.add_argument("--min-s", type=float, default=0.05)
    ap.add_argument("--max-s", type=float, default=0.5)
    ap.add_argument("--repeats", type=int, default=2)
    args = ap.parse_args()

    import ray

    from rlhf_ray.trainers.session import start_local_ray

    start_local_ray(num_cpus=4, namespace="bench_multiturn", log_to_driver=False)
    try:
        rows = run_mode(args.model, "lockstep", args) + run_mode(args.model, "continuous", args)
    finally:
        ray.shutdown()
    print(f"machine: {machine()}")
    print(f"{args.prompts} trajectories × {args.turns} turns, ≤ {args.new_tokens} tokens a turn, "
          f"environment calls {args.min_s * 1000:.0f}-{args.max_s * 1000:.0f} ms, model {args.model}\n")
    print(table(rows, "Multi-turn generation: lockstep vs continuous"))
    mean = {m: sum(r["engine_idle_s"] for r in rows if r["scheduling"] == m) / args.repeats for m in ("lockstep", "continuous")}
    wall = {m: sum(r["wall_s"] for r in rows if r["scheduling"] == m) / args.repeats for m in ("lockstep", "continuous")}
    print(f"engine idle: lockstep {mean['lockstep']:.2f} s, continuous {mean['continuous']:.2f} s; "
          f"wall ratio lockstep / continuous = {wall['lockstep'] / wall['continuous']:.2f}")


if __name__ == "__main__":
    main()
