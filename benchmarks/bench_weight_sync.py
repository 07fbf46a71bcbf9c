"""Weight sync bandwidth: learner → N rollout engines through rlhf_ray's bucketed push, against a
plain in-process copy of the same state dict on the same machine (the ratio is the figure).

    .venv/bin/python benchmarks/bench_weight_sync.py [--model smollm2] [--engines 1 2] [--bucket-mb 64 256]
"""

from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, table  # noqa: E402


def in_process_copy_bytes_per_s(model, repeats: int = 3) -> float:

    state = {n: p.detach() for n, p in model.named_parameters()}
    nbytes = sum(t.numel() * t.element_size() for t in state.values())
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        copy = {n: t.clone() for n, t in state.items()}
        best = min(best, time.perf_counter() - start)
        del copy
    return nbytes / best


def object_store_round_trip(model, repeats: int = 3) -> list[dict]:
    """ray.put on one side, ray.get on the other, of the same weights: as pickled torch tensors (how
    they travelled before rlhf_ray.models.wire) and as numpy views (now). Best of ``repeats``."""
    import ray

    from rlhf_ray.models.wire import to_wire, unpack

    named = [(n, p.detach()) for n, p in model.named_parameters()]
    nbytes = sum(t.numel() * t.element_size() for _, t in named)
    forms = {"torch tensors (before)": lambda: [(n, t.clone()) for n, t in named],
             "numpy views (now)": lambda: [(n, *to_wire(t)) for n, t in named]}
    rows = []
    for label, make in forms.items():
        best = float("inf")
        for _ in range(repeats):
            start = time.perf_counter()
            got = unpack(ray.get(ray.put(make())))
            best = min(best, time.perf_counter() - start)
            del got
        rows.append({"payload": label, "seconds": best, "MB/s": nbytes / best / 1e6})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--engines", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--bucket-mb", type=float, nargs="+", default=[64, 256])
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray

    from rlhf_ray.config import load_config
    from rlhf_ray.groups import WorkerGroup
    from rlhf_ray.models.loading import load_causal_lm
    from rlhf_ray.roles import PolicyLearner, Rollout
    from rlhf_ray.trainers.session import resolve_model_path, start_local_ray

    path = resolve_model_path(args.model)
    model = load_causal_lm(path)
    baseline = in_process_copy_bytes_per_s(model)
    start_local_ray(num_cpus=8)
    transport = object_store_round_trip(model)
    del model
    rows = []
    for n in args.engines:
        cfg = load_config(overrides=[f"model.path={path}", f"rollout.num_actors={n}", "learner.num_actors=1",
                                     "ppo.minibatch_samples_global=32"])
        learner = WorkerGroup("learner", PolicyLearner, cfg, f"bench-sync-{n}")
        rollout = WorkerGroup("rollout", Rollout, cfg, f"bench-sync-{n}")
        addr, port = learner.get([learner.actors[0].master_address.remote()])[0]
        learner.get(learner.call(PolicyLearner.setup_distributed, addr, port))
        loading = learner.call(PolicyLearner.init_model, path), rollout.call(Rollout.init_model, path)
        learner.get(loading[0])
        rollout.get(loading[1])
        for bucket in args.bucket_mb:
            best = None
            for r in range(args.repeats):
                m = learner.get(learner.call(PolicyLearner.push_weights, rollout.actors, r + 1, bucket))[0]
                best = m if best is None or m["sync/seconds"] < best["sync/seconds"] else best
            per_engine = best["sync/bytes"] / best["sync/seconds"]
            rows.append({"engines": n, "bucket MiB": bucket, "MB": best["sync/bytes"] / 1e6,
                         "seconds": best["sync/seconds"], "MB/s per engine": per_engine / 1e6,
                         "MB/s all engines": n * per_engine / 1e6, "in-process copy MB/s": baseline / 1e6,
                         "ratio (all engines / copy)": n * per_engine / baseline})
        learner.kill()
        rollout.kill()
    ray.shutdown()
    print(f"machine: {machine()}\nmodel: {path}\n")
    print(table(rows, "weight sync: learner → rollout engines vs in-process state-dict copy"))
    print(table(transport, "object store round trip of the weights (put + get, one node; the torch row includes "
                           "the clone that the learner used to make)"))


if __name__ == "__main__":
    main()
