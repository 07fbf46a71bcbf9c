"""Weight sync across nodes: learner → 1, 2, 4 rollout engines, each on a node of its own, by each
transport (sync.transport), on Ray's multi-node test cluster (one raylet and object store per node,
all on this machine's loopback). Per row: the sync's seconds, and the bytes that left the learner's
node (TCP bytes sent by the learner's process and its node's raylet, which serves the object store's
transfers), taken from the kernel's per-socket counters (`ss -tinp`) before and after, and the CPU
seconds those two processes spent on the sync (/proc): the work the learner's node does. On this
machine every node shares the same cores and memory, so the wall seconds of many engines measure the
machine's total copying work; the learner node's bytes and CPU seconds are what carry to a cluster.

    .venv/bin/python benchmarks/bench_weight_sync.py [--model smollm2] [--engines 1 2 4] [--backend hf|vllm]

The second table is the object store round trip of the same weights as torch tensors and as numpy
views (rlhf_ray.models.wire), on one node.
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, table  # noqa: E402


def bytes_sent_by(pids: set[int]) -> int:
    """TCP bytes sent so far on the open sockets of ``pids`` (the kernel's tcp_info.bytes_sent)."""
    out = subprocess.run(["ss", "-tinpH"], capture_output=True, text=True, check=True).stdout
    total, owner = 0, None
    for line in out.splitlines():
        if not line.startswith(("\t", " ")):
            owner = {int(p) for p in re.findall(r"pid=(\d+)", line)}
            continue
        m = re.search(r"bytes_sent:(\d+)", line)
        if m and owner & pids:
            total += int(m.group(1))
    return total


def cpu_seconds_of(pids: set[int]) -> float:
    """User + system CPU seconds used so far by ``pids`` (all their threads), from /proc."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])  # utime, stime (fields 14, 15 of proc(5))
    return total / ticks


def object_store_round_trip(model, repeats: int = 3) -> list[dict]:
    """ray.put on one side, ray.get on the other, of the same weights: as pickled torch tensors and
    as numpy views. Best of ``repeats``."""
    import ray

    from rlhf_ray.models.wire import to_wire, unpack

    named = [(n, p.detach()) for n, p in model.named_parameters()]
    nbytes = sum(t.numel() * t.element_size() for _, t in named)
    forms = {"torch tensors": lambda: [(n, t.clone()) for n, t in named],
             "numpy views (rlhf_ray)": lambda: [(n, *to_wire(t)) for n, t in named]}
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
    parser.add_argument("--engines", type=int, nargs="+", default=[1, 2, 4])
    parser.add_argument("--transports", nargs="+", default=["object_store", "collective"])
    parser.add_argument("--backend", default="hf", choices=["hf", "vllm"],
                        help="engine kind (the transfer is the same; vLLM adds its reload time and memory)")
    parser.add_argument("--bucket-mb", type=float, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import ray
    from ray._private import ray_constants
    from ray.cluster_utils import Cluster

    from rlhf_ray.cluster.groups import WorkerGroup
    from rlhf_ray.config.loading import load_config
    from rlhf_ray.models.loading import load_causal_lm, resolve_model_path
    from rlhf_ray.roles import PolicyLearner, Rollout
    from rlhf_ray.trainers.weight_group import form_weight_group

    path = resolve_model_path(args.model)
    # Every node on 127.0.0.1 (see rlhf_ray.trainers.session.start_local_ray for why both are needed).
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    store = 1200 * 2**20  # per node: a 256 MiB bucket and SmolLM2's 540 MB with room
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": store,
                                                           "node_ip_address": "127.0.0.1"})
    learner_node = cluster.add_node(num_cpus=2, resources={"bench_learner": 1}, object_store_memory=store,
                                    node_ip_address="127.0.0.1")
    for _ in range(max(args.engines)):
        cluster.add_node(num_cpus=2, resources={"bench_engine": 1}, object_store_memory=store,
                         node_ip_address="127.0.0.1")
    ray.init(address=cluster.address)
    raylet_pid = learner_node.all_processes["raylet"][0].process.pid
    rows = []
    try:
        for transport in args.transports:
            for n in args.engines:
                cfg = load_config(overrides=[
                    f"model.path={path}", f"rollout.num_actors={n}", f"rollout.backend={args.backend}",
                    "rollout.resources_per_actor={bench_engine: 1}", "learner.resources_per_actor={bench_learner: 1}",
                    f"sync.transport={transport}", f"sync.bucket_mb={args.bucket_mb}", "rollout.num_cpus_per_actor=1",
                    "learner.num_cpus_per_actor=1", "ppo.minibatch_samples_global=32"])
                learner = WorkerGroup("learner", PolicyLearner, cfg, f"bench-{transport}-{n}")
                rollout = WorkerGroup("rollout", Rollout, cfg, f"bench-{transport}-{n}")
                addr, port = learner.get([learner.actors[0].master_address.remote()])[0]
                learner.get(learner.call(PolicyLearner.setup_distributed, addr, port))
                loading = learner.call(PolicyLearner.init_model, path), rollout.call(Rollout.init_model, path)
                learner.get(loading[0])
                rollout.get(loading[1])
                nodes = {w["node_id"] for w in rollout.get(rollout.call(Rollout.identity))}
                learner_id = learner.get(learner.call(PolicyLearner.identity))[0]
                assert len(nodes) == n and learner_id["node_id"] not in nodes, "engines must sit on nodes of their own"
                pids = {learner_id["pid"], raylet_pid}
                if transport == "collective":
                    form_weight_group(learner, rollout, 1)
                best = None
                for r in range(args.repeats):
                    before, cpu_before = bytes_sent_by(pids), cpu_seconds_of(pids)
                    m = learner.get(learner.call(PolicyLearner.push_weights, rollout.actors, r + 1))[0]
                    m["sent"] = bytes_sent_by(pids) - before
                    m["cpu"] = cpu_seconds_of(pids) - cpu_before
                    best = m if best is None or m["sync/seconds"] < best["sync/seconds"] else best
                rows.append({"transport": transport, "engines": n, "model MB": best["sync/bytes"] / 1e6,
                             "buckets": int(best["sync/buckets"]), "seconds": best["sync/seconds"],
                             "prepare s": best["sync/prepare_s"], "transfer s": best["sync/transfer_s"],
                             "engines wait s": best["sync/wait_s"],
                             "learner node CPU s": best["cpu"], "MB sent by learner node": best["sent"] / 1e6,
                             "sent / model": best["sent"] / best["sync/bytes"]})
                print(rows[-1], flush=True)
                learner.kill()
                rollout.kill()
        model = load_causal_lm(path)
        round_trip = object_store_round_trip(model)
    finally:
        ray.shutdown()
        cluster.shutdown()
    print(f"machine: {machine()}\nmodel: {path}, engines: {args.backend}, bucket {args.bucket_mb:g} MiB, best of "
          f"{args.repeats}\n")
    print(table(rows, "weight sync across nodes: learner node → N engine nodes"))
    print(table(round_trip, "object store round trip of the weights (put + get, one node)"))


if __name__ == "__main__":
    main()
