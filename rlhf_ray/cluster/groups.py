"""Worker groups: N Ray actors of one role, called together like one object.

The controller never loops over actors itself: it calls a group, which either sends the same call
to every rank (``call``) or splits a batch evenly across ranks and concatenates the answers in order
(``map_batch``). Remote calls are awaited with a timeout that names the actor that hung.

Methods are passed by reference, ``group.map_batch(PolicyLearner.compute_logprobs, batch)``, never
by name: an editor follows them to their definition, and a method of another role's class fails at
the call with both names, not deep inside Ray.

A group can shrink: an untrained role's rank whose node is lost, and which cannot be placed again,
is dropped (``drop``); the remaining ranks keep their names and placement bundles, and ``size``,
``actors`` and ``map_batch`` cover them alone. Positions (0..size-1) index ``actors``; ``ranks``
holds each position's rank, the one in its actor name and bundle.
"""

from __future__ import annotations

import time
from typing import Any, Callable, Sequence

import ray
import torch
from ray.util.placement_group import remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from rlhf_ray.cluster.layout import check_feasible, describe_resources
from rlhf_ray.cluster.placement import cluster_nodes, create_placement_groups
from rlhf_ray.config import Config, RoleResources
from rlhf_ray.data.batch import Batch, split_batch
from rlhf_ray.runs.logs import ACTOR_LOG_ENV, actor_log_file


class RemoteCallError(RuntimeError):
    pass


class WorkerGroup:
    def __init__(self, role: str, worker_cls: type, cfg: Config, run_id: str = "run", placement_group=None):
        res: RoleResources = getattr(cfg, role)
        self.role = role
        self.worker_cls = worker_cls
        self.placement_group = placement_group
        self.resources = res
        self.world_size = res.num_actors  # as started; ``size`` shrinks when ranks are dropped
        self.timeout = cfg.trainer.call_timeout_s
        # After a node is lost, Ray places its placement-group bundles elsewhere only when resources there are
        # free; past this wait a respawned rank counts as unplaceable.
        self.placement_wait_s = cfg.trainer.placement_wait_s
        self._spawn_args = (ray.remote(worker_cls), cfg, run_id)
        self.ranks = list(range(self.world_size))
        self.actors = [self._spawn(rank) for rank in self.ranks]

    @property
    def size(self) -> int:
        return len(self.actors)

    def _spawn(self, rank: int):
        remote_cls, cfg, run_id = self._spawn_args
        res = self.resources
        pg = self.placement_group
        return remote_cls.options(
            name=f"{run_id}/{self.role}-{rank}", namespace=cfg.ray.namespace,
            num_cpus=res.num_cpus_per_actor, num_gpus=res.num_gpus_per_actor, resources=res.resources_per_actor,
            runtime_env={"env_vars": _actor_env(res, cfg, run_id, self.role, rank)},
            scheduling_strategy=None if pg is None else PlacementGroupSchedulingStrategy(
                placement_group=pg, placement_group_bundle_index=rank),
            **self.worker_cls.actor_options(cfg),
        ).remote(cfg, rank, self.world_size)

    def dead_ranks(self, timeout_s: float = 10.0) -> list[int]:
        """Ranks whose actor process is gone (killed, or its node lost). An actor that does not answer
        within ``timeout_s`` is alive but busy: a survivor stuck in a collective with a dead rank."""
        refs = self.call(self.worker_cls.identity)
        ready, _ = ray.wait(refs, num_returns=len(refs), timeout=timeout_s)
        dead = []
        for rank, ref in enumerate(refs):
            if ref in ready:
                try:
                    ray.get(ref)
                except ray.exceptions.RayActorError:
                    dead.append(rank)
        return dead

    def respawn(self, positions: list[int]) -> None:
        """New actors in the dead ones' places (same name, resources and placement bundle)."""
        for i in positions:
            ray.kill(self.actors[i], no_restart=True)
            self.actors[i] = self._spawn(self.ranks[i])

    def unplaced(self, positions: list[int]) -> list[int]:
        """Those of ``positions`` whose placement bundle has no alive node after ``placement_wait_s``:
        Ray moves a lost node's bundles only to nodes with their resources free. A placed actor still
        starting (its imports take seconds) counts as placed: later calls wait for it."""
        if self.placement_group is None:
            return []
        deadline = time.monotonic() + self.placement_wait_s
        while True:
            alive = {n["NodeID"] for n in ray.nodes() if n["Alive"]}
            where = ray.util.placement_group_table(self.placement_group)["bundles_to_node_id"]
            homeless = [i for i in positions if where.get(self.ranks[i]) not in alive]
            if not homeless or time.monotonic() > deadline:
                return homeless
            time.sleep(1.0)

    def drop(self, positions: list[int]) -> None:
        """The group goes on without these actors (killed; their bundles stay reserved, unused)."""
        for i in sorted(positions, reverse=True):
            ray.kill(self.actors[i], no_restart=True)
            del self.actors[i], self.ranks[i]

    def describe_needs(self) -> str:
        """What one actor asks of a node: '0.4 CPU, 0 GPU, 1 trainer'."""
        res = self.resources
        return describe_resources({"CPU": res.num_cpus_per_actor, "GPU": res.num_gpus_per_actor,
                                   **res.resources_per_actor})

    def method_name(self, method: Callable) -> str:
        """The name of ``method`` (a function of this group's worker class) on the actors."""
        name = getattr(method, "__name__", None)
        if name is None or getattr(self.worker_cls, name, None) is not method:
            raise TypeError(f"{getattr(method, '__qualname__', method)!r} is not a method of {self.worker_cls.__name__}, "
                            f"the class of the {self.role} actors")
        return name

    def call(self, method: Callable, *args, **kwargs) -> list[ray.ObjectRef]:
        """The same call on every rank."""
        name = self.method_name(method)
        return [getattr(a, name).remote(*args, **kwargs) for a in self.actors]

    def call_ranks(self, method: Callable, positions: Sequence[int], *args) -> list[ray.ObjectRef]:
        """The same call on the actors at the given positions only."""
        name = self.method_name(method)
        return [getattr(self.actors[i], name).remote(*args) for i in positions]

    def map_batch(self, method: Callable, batch: Batch, *args) -> list[ray.ObjectRef]:
        """Splits ``batch`` evenly over the ranks; ``gather_cat`` joins the results in order."""
        name = self.method_name(method)
        shards = split_batch(batch, self.size)
        return [getattr(a, name).remote(s, *args) for a, s in zip(self.actors, shards)]

    def get(self, refs: list[ray.ObjectRef], what: str = "") -> list[Any]:
        """Results in order. Fails as soon as any call fails: when one rank of a data-parallel group
        dies, the others wait in a collective that would never finish, so waiting for all first
        would turn a lost actor into a timeout."""
        deadline, pending = time.monotonic() + self.timeout, list(refs)
        while pending:
            ready, pending = ray.wait(pending, num_returns=1, timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                late = [f"{self.role}-{self.ranks[i] if len(refs) == self.size else i}"
                        for i, r in enumerate(refs) if r in pending]
                raise RemoteCallError(f"{what or 'remote call'} on {', '.join(late)} did not finish within "
                                      f"trainer.call_timeout_s={self.timeout:g}s")
            ray.get(ready[0])  # raises the actor's error now, not after the others
        return ray.get(refs)

    def gather_cat(self, refs: list[ray.ObjectRef], what: str = "") -> torch.Tensor:
        return torch.cat(self.get(refs, what))

    def kill(self) -> None:
        for a in self.actors:
            ray.kill(a, no_restart=True)


def start_groups(cfg: Config, classes: dict[str, type], run_id: str, sidecar: bool = False) -> dict[str, WorkerGroup]:
    """Checks the layout against the cluster, reserves placement groups, then starts the actors.
    ``sidecar``: groups beside a run's own (rlhf_ray.trainers.sidecar), their placement groups named
    after ``run_id`` too."""
    roles = list(classes)
    check_feasible(cfg, cluster_nodes(), roles)
    pgs = create_placement_groups(cfg, roles, prefix=f"{run_id}/" if sidecar else "")
    return {role: WorkerGroup(role, cls, cfg, run_id, pgs[role]) for role, cls in classes.items()}


# glibc hands every freed block over 32 MiB (activations, logits) back to the OS and page-faults it
# in again, zeroed, on the next step: a third of a CPU training step went to the kernel. Disabling
# mmap'd blocks and heap trimming keeps freed memory for reuse, as CUDA's caching allocator does.
KEEP_FREED_MEMORY = {"MALLOC_MMAP_MAX_": "0", "MALLOC_TRIM_THRESHOLD_": str(2**45)}


def _actor_env(res: RoleResources, cfg: Config, run_id: str, role: str, rank: int) -> dict[str, str]:
    env = {"TOKENIZERS_PARALLELISM": "false"}
    if not cfg.logging.verbose:  # the actor's output to its own file (rlhf_ray.runs.logs)
        env[ACTOR_LOG_ENV] = str(actor_log_file(cfg.trainer.run_dir, run_id, role, rank))
    if res.torch_threads:
        env["OMP_NUM_THREADS"] = str(res.torch_threads)
    if cfg.ray.cpu_malloc_keep_freed and not res.num_gpus_per_actor:
        env.update(KEEP_FREED_MEMORY)
    return env


def shutdown_groups(groups: dict[str, WorkerGroup]) -> None:
    """Kills the actors, then frees their placement groups (colocated roles share one)."""
    for g in groups.values():
        g.kill()
    for pg in {id(g.placement_group): g.placement_group for g in groups.values() if g.placement_group}.values():
        remove_placement_group(pg)
