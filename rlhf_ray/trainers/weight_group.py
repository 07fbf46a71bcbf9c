"""Forming the weight group of a learner group's rank 0 and a rollout group's engines (sync.transport=collective)."""

from __future__ import annotations

from rlhf_ray.cluster.groups import WorkerGroup
from rlhf_ray.roles import PolicyLearner, Rollout


def form_weight_group(learner: WorkerGroup, rollout: WorkerGroup, tensor_parallel_size: int) -> list:
    """Every member joins a new group: the learner's rank 0 as rank 0, then each engine's workers in
    turn (consecutive ranks, one per tensor-parallel worker). Returns the members (actor handles), so
    that a caller can tell when they changed; a group cannot change its members, it is made anew."""
    tp = tensor_parallel_size
    # Keyed by each engine's own rank, which it keeps when other engines are dropped.
    first_ranks = {rank: 1 + i * tp for i, rank in enumerate(rollout.ranks)}
    world_size = 1 + tp * len(first_ranks)
    addr, port = learner.get(learner.call_ranks(PolicyLearner.weight_group_address, [0]), "weight group address")[0]
    joins = (learner.call(PolicyLearner.join_weight_group, addr, port, world_size)
             + rollout.call(Rollout.join_weight_group, addr, port, world_size, first_ranks))
    rollout.get(joins, "weight group rendezvous")
    return [learner.actors[0], *rollout.actors]
