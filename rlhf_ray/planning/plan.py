"""`rlhf-ray plan`: which actor goes on which node and device, and whether its memory fits there.

The placement is rlhf_ray.cluster.layout.assign (the packing ``check_feasible`` checks), the memory per actor
rlhf_ray.planning.memory, what each node offers rlhf_ray.cluster.hardware. Each GPU's sum (actors sharing it through
fractional ``num_gpus_per_actor`` or ``placement.colocate``) is checked against its memory, and each
node's RAM against its CPU actors plus the GPU actors' weights while they load. Nothing starts.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field

from rlhf_ray.cluster.hardware import NodeSpec, local_gpus, local_node, nodes_from_file, running_cluster_nodes
from rlhf_ray.cluster.layout import Placed, assign
from rlhf_ray.config import Config
from rlhf_ray.planning.memory import CPU_RUNTIME, GIB, Estimate, model_folder, model_shape, role_estimates, rollout_estimate

COLUMNS = ("weights", "gradients", "optimizer", "activations", "logits", "kv/vLLM", "runtime")


class DoesNotFit(ValueError):
    """The plan's memory check failed; the message names each device or node, its actors and the GiB over."""


@dataclass
class Load:
    """What one GPU or one node's RAM holds: (actor, bytes) each, against what it offers (None: unknown)."""
    where: str
    offered: int | None
    actors: list[tuple[str, int]] = field(default_factory=list)

    @property
    def used(self) -> int:
        return sum(b for _, b in self.actors)


@dataclass
class Plan:
    nodes: list[NodeSpec]
    where: str
    actors: list[tuple[Placed, Estimate]]
    loads: list[Load]
    problems: list[str]
    warnings: list[str]


def plan_nodes(cfg: Config, cluster: str | None = None, gpu_gib: float | None = None) -> tuple[list[NodeSpec], str]:
    """The nodes to plan for: ``cluster`` (--cluster), else ray.cluster_config, else the running cluster
    ray.address names, else this machine as a local Ray would have it (its CPUs, GPUs and RAM)."""
    path = cluster or cfg.ray.cluster_config
    if path:
        return nodes_from_file(path, gpu_gib), f"the cluster file {path}"
    if cfg.ray.cluster_address():
        import ray  # heavy: only for a running cluster

        ray.init(address=cfg.ray.cluster_address(), namespace=cfg.ray.namespace, log_to_driver=False)
        try:
            return running_cluster_nodes(gpu_gib), f"the running cluster at {cfg.ray.address}"
        finally:
            ray.shutdown()
    cpus = cfg.ray.local_num_cpus or os.cpu_count() or 1
    return [local_node(cpus, local_gpus(cfg), gpu_gib)], "this machine (a local Ray)"


def make_plan(cfg: Config, nodes: list[NodeSpec], where: str) -> Plan:
    """Places every actor (raises layout.InfeasibleLayout when the resources do not fit) and sums memory."""
    placed = assign(cfg, [n.resources for n in nodes], where=where)
    base = role_estimates(cfg)
    gpus: dict[tuple[int, int], Load] = {}
    hosts = [Load(f"{n.name} RAM", None if n.ram_gib is None else int(n.ram_gib * GIB)) for n in nodes]
    actors, problems, warnings = [], [], []
    for p in placed:
        node = nodes[p.node]
        est = base[p.role]
        if p.role == "rollout" and est.on_gpu:
            est = rollout_estimate(cfg, _shape_of(cfg), None if node.gpu_gib is None else int(node.gpu_gib * GIB))
        actors.append((p, est))
        label = f"{p.role}#{p.rank}"
        if est.on_gpu and p.gpus:
            for j, (i, _) in enumerate(p.gpus if p.role == "rollout" else p.gpus[:1]):  # torch uses cuda:0 of its GPUs
                load = gpus.setdefault((p.node, i), Load(f"{node.name} GPU {i}",
                                                         None if node.gpu_gib is None else int(node.gpu_gib * GIB)))
                load.actors.append((label, est.total))
            hosts[p.node].actors.append((label + " (loading)", CPU_RUNTIME + est.host_load))
        else:
            hosts[p.node].actors.append((label, est.total))
        if est.problem and est.problem not in problems:
            problems.append(f"{label} on {node.name}: {est.problem}")
    actors.sort(key=lambda pe: (pe[0].node, pe[0].gpus[0][0] if pe[1].on_gpu and pe[0].gpus else 1 << 30))
    loads = [gpus[k] for k in sorted(gpus)] + [h for h in hosts if h.actors]
    over = [load for load in loads if load.offered is not None and load.used > load.offered]
    alike: dict[tuple, list[Load]] = {}  # devices of one node with the same roles and bytes: one line for all
    for load in over:
        alike.setdefault((load.where.rsplit(" GPU ", 1)[0], tuple(a.split("#")[0] for a, _ in load.actors), load.used),
                         []).append(load)
    advice = []
    for group in alike.values():
        problems.append(_over(group, actors))
        tip = _advice(cfg, {a.split("#")[0] for a, _ in group[0].actors}, len(group[0].actors) > 1)
        if tip not in advice:
            advice.append(tip)
    problems += [f"change: {tip}" for tip in advice]
    for n in {n.name.split(" #")[0]: n for n in nodes if n.resources.get("GPU") and n.gpu_gib is None}.values():
        warnings.append(f"GPU memory of {n.name.split(' #')[0]} unknown ({n.source}): its GPUs are not checked; "
                        f"pass --gpu-memory-gib")
    return Plan(nodes, where, actors, loads, problems, warnings)


def _shape_of(cfg: Config):
    return model_shape(model_folder(cfg.learner.model_path or cfg.model.path), "causal_lm")


def _over(group: list[Load], actors: list[tuple[Placed, Estimate]]) -> str:
    """'<where>: needs X GiB of Y GiB (Z GiB over): actor a GiB (its biggest parts), ...' for one load, or
    for several alike GPUs of a node 'GPUs 0, 1, ...: ... each'."""
    by_label = {f"{p.role}#{p.rank}": e for p, e in actors}
    load = group[0]
    parts = []
    for label, b in load.actors:
        e = by_label[label.split(" ")[0]]
        top = sorted(e.parts.items(), key=lambda kv: -kv[1])[:3]
        what = "weights loading in fp32" if label.endswith("(loading)") else ", ".join(f"{k} {v / GIB:.1f}" for k, v in top)
        parts.append(f"{label} {b / GIB:.1f} GiB ({what})")
    where = load.where if len(group) == 1 else (load.where.rsplit(" GPU ", 1)[0] + " GPUs "
                                                + ", ".join(g.where.rsplit(" ", 1)[1] for g in group) + ", each")
    return (f"{where}: needs {load.used / GIB:.1f} GiB of {load.offered / GIB:.1f} GiB "
            f"({(load.used - load.offered) / GIB:.1f} GiB over): " + "; ".join(parts)
            + (f" (and the same on the other GPUs: {', '.join(a for g in group[1:] for a, _ in g.actors)})" if len(group) > 1 else ""))


def _advice(cfg: Config, roles: set[str], shared: bool) -> str:
    tips = []
    for r in sorted(roles & set(cfg.spec.trained_roles)):
        rc = getattr(cfg, r)
        if rc.zero_stage < 3:
            tips.append(f"{r}.zero_stage={'2 or 3' if rc.zero_stage < 2 else 3}")
        tips.append(f"more {r}.num_actors (now {rc.num_actors}) to split its model states")
        if not rc.gradient_checkpointing:
            tips.append(f"{r}.gradient_checkpointing=true")
        if rc.micro_batch_samples_per_actor > 1:
            tips.append(f"a smaller {r}.micro_batch_samples_per_actor (now {rc.micro_batch_samples_per_actor})")
    for r in sorted(roles & {"reference", "reward"} - set(cfg.spec.trained_roles)):
        tips.append(f"a smaller {r}.micro_batch_samples_per_actor or micro_batch_tokens_per_actor")
    if "rollout" in roles:
        tips.append(f"a lower rollout.gpu_memory_utilization (now {cfg.rollout.gpu_memory_utilization:g})")
    if shared:
        tips.append("fewer roles on one GPU (placement.colocate, fractional num_gpus_per_actor)")
    return ", ".join(tips) or "a node with more memory"


def _names(load: Load) -> str:
    """The actors of a load, or for many of them their count per role ('learner ×8, while loading')."""
    if len(load.actors) <= 4:
        return ", ".join(a for a, _ in load.actors)
    counts: dict[str, int] = {}
    for a, _ in load.actors:
        counts[a.split("#")[0]] = counts.get(a.split("#")[0], 0) + 1
    loading = " (loading)" if all(a.endswith("(loading)") for a, _ in load.actors) else ""
    return ", ".join(f"{r} ×{n}" for r, n in counts.items()) + loading


def render(plan: Plan, title: str) -> str:
    """The plan as text: one row per actor (node, devices, memory breakdown in GiB), then each GPU and
    node's RAM used against offered, the notes, warnings and what does not fit."""
    g = lambda b: f"{b / GIB:.1f}"  # noqa: E731
    lines = [f"plan for {title} on {plan.where}: {len(plan.nodes)} node(s), "
             f"{sum(n.resources.get('GPU', 0) for n in plan.nodes):g} GPU(s); memory in GiB"]
    head = ["actor", "node", "device", *COLUMNS, "total"]
    rows = []
    for p, e in plan.actors:
        cols = dict.fromkeys(COLUMNS, 0)
        for k, v in e.parts.items():
            cols["kv/vLLM" if k.startswith(("kv", "vLLM")) else k] += v
        dev = ",".join(f"GPU {i}" + (f" ×{s:g}" if s < 1 else "") for i, s in p.gpus) if e.on_gpu and p.gpus else "CPU"
        rows.append([f"{p.role}#{p.rank}", plan.nodes[p.node].name, dev,
                     *(g(cols[c]) if cols[c] else "-" for c in COLUMNS), g(e.total)])
    widths = [max(len(str(r[i])) for r in [head, *rows]) for i in range(len(head))]
    for r in [head, *rows]:
        lines.append("  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    lines.append("")
    for load in plan.loads:
        offered = "?" if load.offered is None else g(load.offered)
        mark = "" if load.offered is None else "  OVER" if load.used > load.offered else "  ok"
        lines.append(f"{load.where}: {g(load.used)} / {offered}{mark}  ({_names(load)})")
    seen = set()
    for p, e in plan.actors:
        for note in e.notes:
            if (p.role, note) not in seen:
                seen.add((p.role, note))
                lines.append(f"note: {p.role}: {note}")
    lines += [f"warning: {w}" for w in plan.warnings]
    if plan.problems:
        lines.append("DOES NOT FIT:\n  " + "\n  ".join(plan.problems))
    else:
        lines.append("fits: every GPU and node holds its actors" + (" (unchecked ones above)" if plan.warnings else ""))
    return "\n".join(lines)


def check_fit(cfg: Config, cluster: str | None = None, gpu_gib: float | None = None) -> Plan:
    """The plan for ``cfg``; raises DoesNotFit with every device or node over its memory."""
    nodes, where = plan_nodes(cfg, cluster, gpu_gib)
    result = make_plan(cfg, nodes, where)
    if result.problems:
        raise DoesNotFit(f"the run does not fit {where} (rlhf-ray plan prints the whole plan):\n  "
                         + "\n  ".join(result.problems))
    return result
