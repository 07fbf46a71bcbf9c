"""Where actors go: a placement group per planned group of roles (rlhf_ray.cluster.layout), on a running Ray."""

from __future__ import annotations

import ray
from ray.util.placement_group import placement_group

from rlhf_ray.cluster.layout import InfeasibleLayout, plan
from rlhf_ray.config import Config


def cluster_nodes() -> list[dict[str, float]]:
    """CPU, GPU and custom resources of each alive node of the connected Ray cluster (not Ray's own
    per-node ``node:<ip>`` markers nor its memory accounting)."""
    skip = ("memory", "object_store_memory")
    return [{"CPU": 0.0, "GPU": 0.0, **{k: v for k, v in n["Resources"].items()
                                        if not k.startswith("node:") and k not in skip}}
            for n in ray.nodes() if n["Alive"]]


def create_placement_groups(cfg: Config, roles: list[str] | None = None, timeout_s: float = 120, prefix: str = ""):
    """One placement group per plan, ready; returns {role: (pg, plan)}. ``prefix`` starts the groups' names
    (a sidecar's groups beside the run's own: Ray refuses a second live group of the same name)."""
    out = {}
    for p in plan(cfg, roles):
        bundles = [{k: v for k, v in b.items() if v > 0} or {"CPU": 0.001} for b in p.bundles]
        pg = placement_group(bundles, strategy=cfg.placement.strategy, name=f"{prefix}{'+'.join(p.roles)}")
        try:
            ray.get(pg.ready(), timeout=timeout_s)
        except ray.exceptions.GetTimeoutError:
            raise InfeasibleLayout(f"placement group for {'+'.join(p.roles)} ({bundles}) was not placed within "
                                   f"{timeout_s:g}s: the cluster lacks free resources (see the Ray dashboard)") from None
        for r in p.roles:
            out[r] = pg
    return out
