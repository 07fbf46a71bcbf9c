"""The actor layout a config asks for, and whether it fits a set of nodes: pure, no Ray.

Roles listed together in ``placement.colocate`` share one placement group: rank i of each of them
sits in bundle i, so e.g. the learner and the reference of rank i share a GPU. Every other role
gets a placement group of its own. ``placement.strategy`` (PACK, SPREAD, ...) applies to each group.
The nodes come from a running cluster (rlhf_ray.cluster.placement), a cluster file (``nodes_from_cluster_file``)
or this machine (the preflight, before a local Ray is started).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import yaml

from rlhf_ray.config import Config
from rlhf_ray.config.loading import read_yaml


class InfeasibleLayout(ValueError):
    pass


@dataclass
class GroupPlan:
    roles: list[str]
    bundles: list[dict[str, float]]  # one per rank, the sum of its roles' per-actor resources


def active_roles(cfg: Config) -> list[str]:
    """The roles an algorithm starts actors for: its row of rlhf_ray.algorithms."""
    return list(cfg.roles)


def plan(cfg: Config, roles: list[str] | None = None) -> list[GroupPlan]:
    roles = roles or active_roles(cfg)
    plans, placed = [], set()
    for group in cfg.placement.colocate:
        members = [r for r in group if r in roles]
        if not members:
            continue
        sizes = {getattr(cfg, r).num_actors for r in members}
        if len(sizes) > 1:
            raise InfeasibleLayout(
                f"placement.colocate {group}: colocated roles need the same num_actors, got "
                + ", ".join(f"{r}.num_actors={getattr(cfg, r).num_actors}" for r in members))
        plans.append(GroupPlan(members, [_sum(cfg, members) for _ in range(sizes.pop())]))
        placed.update(members)
    for r in roles:
        if r not in placed:
            plans.append(GroupPlan([r], [_sum(cfg, [r]) for _ in range(getattr(cfg, r).num_actors)]))
    return plans


def _sum(cfg: Config, roles: list[str]) -> dict[str, float]:
    """One bundle: the CPUs, GPUs and custom resources (``resources_per_actor``) of one actor of each role."""
    out = {"CPU": sum(getattr(cfg, r).num_cpus_per_actor for r in roles),
           "GPU": sum(getattr(cfg, r).num_gpus_per_actor for r in roles)}
    for r in roles:
        for name, amount in getattr(cfg, r).resources_per_actor.items():
            out[name] = out.get(name, 0.0) + amount
    return out


@dataclass
class Placed:
    """One actor where the packing put it: node index, and the GPUs of that node it uses (index, share)."""
    role: str
    rank: int
    node: int
    gpus: list[tuple[int, float]]


def check_feasible(cfg: Config, nodes: list[dict[str, float]], roles: list[str] | None = None,
                   where: str = "the cluster") -> None:
    """Raises with what is asked and what is there when the layout does not fit ``nodes`` (resource
    dicts, e.g. from ``cluster_nodes()``); see ``assign``."""
    assign(cfg, nodes, roles, where)


def assign(cfg: Config, nodes: list[dict[str, float]], roles: list[str] | None = None,
           where: str = "the cluster") -> list[Placed]:
    """Packs every bundle onto the nodes, first fit, largest first (each group whole under STRICT_PACK,
    its bundles on distinct nodes under STRICT_SPREAD, on a node it has not used yet when one fits under
    SPREAD), and each bundle's GPUs onto the node's devices as Ray shares them: a whole GPU per unit,
    a fraction on one device with room for it. Returns every actor's node and devices: one placement
    Ray may choose, not necessarily the one it will. Raises InfeasibleLayout naming the bundle left over."""
    plans = plan(cfg, roles)
    free = [dict(n) for n in nodes]
    devices = [{i: 1.0 for i in range(int(n.get("GPU", 0) + 1e-9))} for n in nodes]
    strategy = cfg.placement.strategy
    items = [(p, [b]) for p in plans for b in p.bundles] if strategy != "STRICT_PACK" else [
        (p, p.bundles) for p in plans]
    items.sort(key=lambda it: (-_total(it[1])["GPU"], -_total(it[1])["CPU"]))
    used: dict[int, set[int]] = {}  # id(group) -> nodes its bundles went to
    taken: dict[int, list] = {}  # id(group) -> [(node, its GPUs)] per bundle (a group's bundles are alike)
    for p, bundles in items:
        seen = used.setdefault(id(p), set())
        order = sorted(range(len(nodes)), key=lambda i: i in seen) if strategy == "SPREAD" else range(len(nodes))
        for i in order:
            if strategy == "STRICT_SPREAD" and i in seen:
                continue
            gpus = _fit(free[i], devices[i], bundles)
            if gpus is not None:
                break
        else:
            asked = _total(bundles) if strategy == "STRICT_PACK" else bundles[0]
            raise InfeasibleLayout(_explain(plans, nodes, p, asked, where, strategy == "STRICT_SPREAD"))
        seen.add(i)
        taken.setdefault(id(p), []).extend((i, g) for g in gpus)
    out = []
    for p in plans:
        for rank, (node, bundle_gpus) in enumerate(sorted(taken[id(p)], key=lambda t: t[0])):
            share = dict(bundle_gpus)
            for r in p.roles:
                g = _take(share, getattr(cfg, r).num_gpus_per_actor) or []
                out.append(Placed(r, rank, node, g))
    return out


def _fit(free: dict[str, float], devices: dict[int, float], bundles: list[dict[str, float]]):
    """The GPUs (index, share) each bundle takes on this node, taken from ``free``/``devices``; None if not all fit."""
    total = {k: sum(b.get(k, 0.0) for b in bundles) for b in bundles for k in b}
    if not all(free.get(k, 0.0) + 1e-9 >= v for k, v in total.items()):
        return None
    trial = dict(devices)
    gpus = [_take(trial, b["GPU"]) for b in bundles]
    if any(g is None for g in gpus):
        return None
    devices.update(trial)
    for k, v in total.items():
        free[k] = free.get(k, 0.0) - v
    return gpus


def _take(devices: dict[int, float], amount: float) -> list[tuple[int, float]] | None:
    """``amount`` GPUs from ``devices`` (index -> free share): whole free devices for its integer part, the
    fraction on the first device with that much left. Takes them from ``devices``; None if they are not there."""
    whole, frac = int(amount + 1e-9), amount - int(amount + 1e-9)
    got = [(i, 1.0) for i, f in devices.items() if f >= 1.0 - 1e-9][:whole]
    if len(got) < whole:
        return None
    rest = {i: f for i, f in devices.items() if i not in dict(got)}
    if frac > 1e-9:
        i = next((i for i, f in rest.items() if f + 1e-9 >= frac), None)
        if i is None:
            return None
        got.append((i, frac))
    for i, a in got:
        devices[i] -= a
    return got


def _total(bundles: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(b[k] for b in bundles) for k in ("CPU", "GPU")}


def describe_resources(res: dict[str, float]) -> str:
    """'0.4 CPU, 0 GPU, 1 trainer_node': CPU and GPU always, custom resources when present."""
    extra = [f"{v:g} {k}" for k, v in sorted(res.items()) if k not in ("CPU", "GPU") and v]
    return ", ".join([f"{res.get('CPU', 0):g} CPU", f"{res.get('GPU', 0):g} GPU", *extra])


def _explain(plans, nodes, failed: GroupPlan, bundle, where: str, strict_spread: bool = False) -> str:
    asked = "; ".join(f"{'+'.join(p.roles)}: {len(p.bundles)} × ({describe_resources(p.bundles[0])})" for p in plans)
    total = _total([b for p in plans for b in p.bundles])
    there = "; ".join(f"node {i}: {describe_resources(n)}" for i, n in enumerate(nodes)) or "no nodes"
    return (f"the actor layout does not fit {where}: a bundle of {'+'.join(failed.roles)} needing "
            f"{describe_resources(bundle)} has no node left to go to"
            f"{' (placement.strategy=STRICT_SPREAD: one bundle of a group per node)' if strict_spread else ''}; "
            f"asked ({total['CPU']:g} CPU, {total['GPU']:g} GPU in all): {asked}; "
            f"there: {there}; "
            f"lower <role>.num_actors or <role>.num_gpus_per_actor / num_cpus_per_actor, colocate roles "
            f"(placement.colocate), drop or provide <role>.resources_per_actor, or add nodes")


def nodes_from_cluster_file(path: str) -> list[dict[str, float]]:
    """The largest set of nodes a cluster file can bring up (Ray cluster launcher or KubeRay), as
    resource dicts for ``check_feasible``; raises naming the file and the missing field."""
    return [dict(res) for _, count, res, _ in cluster_file_groups(path) for _ in range(count)]


def cluster_file_groups(path: str) -> list[tuple[str, int, dict[str, float], dict]]:
    """(node type or worker group name, most nodes of it, each one's resources, its YAML section) per
    kind of node of a cluster file, head first for KubeRay; rlhf_ray.cluster.hardware reads the sections.
    Errors name the file, the line and the field (ValueError)."""
    doc = read_yaml(Path(path), "cluster file")
    f = _ClusterFile(path)
    if not isinstance(doc, dict):
        f.fail([], "not a YAML mapping (a Ray cluster launcher file, or a KubeRay RayCluster/RayJob)")
    if doc.get("kind") == "RayJob":
        return _kuberay_groups(f.require(doc, ["spec", "rayClusterSpec"]), f, ["spec", "rayClusterSpec"])
    if doc.get("kind") == "RayCluster":
        return _kuberay_groups(f.require(doc, ["spec"]), f, ["spec"])
    types = f.require(doc, ["available_node_types"], dict)
    head = f.require(doc, ["head_node_type"])
    for key in ("cluster_name", "provider", "max_workers"):
        f.require(doc, [key])
    if head not in types:
        f.fail(["head_node_type"], f"head_node_type {head!r} is not one of available_node_types {sorted(types)}")
    groups = []
    for name, t in types.items():
        at = ["available_node_types", name]
        res = f.require(t, ["resources"], dict, at)
        count = 1 if name == head else f.number(t.get("max_workers", 0), at + ["max_workers"], int)
        groups.append((name, count, {"CPU": 0.0, "GPU": 0.0,
                                     **{k: f.number(v, at + ["resources", k]) for k, v in res.items()}}, t))
    return groups


def _kuberay_groups(spec: dict, f: "_ClusterFile", at: list) -> list[tuple[str, int, dict[str, float], dict]]:
    head = f.require(spec, ["headGroupSpec"], dict, at)
    groups = [("head", 1, _pod_resources(head, f, at + ["headGroupSpec"]), head)]
    workers = spec.get("workerGroupSpecs", [])
    if not isinstance(workers, list):
        f.fail(at + ["workerGroupSpecs"], "workerGroupSpecs must be a list of worker groups")
    for i, group in enumerate(workers):
        where = at + ["workerGroupSpecs", i]
        if not isinstance(group, dict):
            f.fail(where, f"workerGroupSpecs[{i}] must be a mapping")
        count = f.number(group.get("maxReplicas", group.get("replicas", 1)), where + ["maxReplicas"], int)
        groups.append((str(group.get("groupName", f"workers{i}")), count, _pod_resources(group, f, where), group))
    return groups


def _pod_resources(group: dict, f: "_ClusterFile", at: list) -> dict[str, float]:
    params = group.get("rayStartParams", {}) or {}
    containers = f.require(group, ["template", "spec", "containers"], list, at)
    if not containers or not isinstance(containers[0], dict):
        f.fail(at + ["template", "spec", "containers"], "containers must list at least one container")
    limits = (containers[0].get("resources") or {}).get("limits") or {}
    cpu = params.get("num-cpus", limits.get("cpu", 0))
    gpu = params.get("num-gpus", limits.get("nvidia.com/gpu", 0))
    milli = str(cpu).endswith("m")
    cpus = f.number(str(cpu).rstrip("m"), at + ["rayStartParams" if "num-cpus" in params else "template"]) / (
        1000 if milli else 1)
    return {"CPU": cpus, "GPU": f.number(gpu, at + ["rayStartParams" if "num-gpus" in params else "template"])}


def _dotted(keys) -> str:
    return ".".join(f"[{k}]" if isinstance(k, int) else str(k) for k in keys).replace(".[", "[")


class _ClusterFile:
    """Errors about one cluster file, each naming the file, the line of the field (from YAML's node
    tree) and the field."""

    def __init__(self, path: str):
        self.path = path

    def require(self, doc, keys: list, kind: type | None = None, at: list = ()):
        node = doc
        for i, key in enumerate(keys):
            if not isinstance(node, dict) or key not in node:
                section = f"{_dotted(at)}: " if at else ""
                self.fail([*at, *keys[:i]], f"{section}missing required field {_dotted(keys)!r}")
            node = node[key]
        if kind is not None and not isinstance(node, kind):
            self.fail([*at, *keys], f"{_dotted([*at, *keys])} must be a "
                                    f"{'mapping' if kind is dict else 'list'}, not {type(node).__name__}")
        return node

    def number(self, value, keys: list, kind: type = float):
        try:
            return kind(float(value)) if kind is int else float(value)
        except (TypeError, ValueError):
            self.fail(keys, f"{_dotted(keys)}={value!r} is not a number")

    def fail(self, keys: list, message: str):
        raise ValueError(f"cluster file {self.path}{self._line(keys)}: {message}")

    def _line(self, keys: list) -> str:
        """':N', the line of the deepest of ``keys`` that the file has ('' when it cannot tell)."""
        try:
            node = yaml.compose(Path(self.path).read_text())
        except (OSError, yaml.YAMLError):
            return ""
        line = node.start_mark.line if node is not None else None
        for key in keys:
            if isinstance(node, yaml.MappingNode):
                match = [(k, v) for k, v in node.value if k.value == str(key)]
                if not match:
                    break
                line, node = match[0][0].start_mark.line, match[0][1]
            elif isinstance(node, yaml.SequenceNode) and isinstance(key, int) and key < len(node.value):
                node = node.value[key]
                line = node.start_mark.line
            else:
                break
        return f":{line + 1}" if line is not None else ""
