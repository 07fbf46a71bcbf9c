"""What every role actor shares: its rank in the group, seeding, threads, and identity."""

from __future__ import annotations

import os
import random
import resource

import numpy as np
import ray
import torch

from rlhf_ray.config import Config, RoleResources
from rlhf_ray.data.batch import Batch, map_micro_batches
from rlhf_ray.models.packing_check import use_packing
from rlhf_ray.runs.logs import ACTOR_LOG_ENV, route_actor_output


class Worker:
    """Base of the role actors. One actor = one rank of a role's group."""

    role = "worker"
    pack = False  # sequence packing for this actor's model, decided by check_packing at model load

    def __init__(self, cfg: Config, rank: int = 0, world_size: int = 1):
        route_actor_output(os.environ.get(ACTOR_LOG_ENV))  # first: loading chatter goes to the run's logs
        self.cfg = cfg
        self.rank = rank
        self.world_size = world_size
        res: RoleResources = getattr(cfg, self.role)
        if res.torch_threads:
            torch.set_num_threads(res.torch_threads)
        seed_everything(cfg.trainer.seed + 1000 * rank)
        self.device = torch.device("cuda" if torch.cuda.is_available() else "cpu")

    @staticmethod
    def actor_options(cfg: Config) -> dict:
        """Ray actor options of this role beyond resources and placement (environment actors run calls in threads)."""
        return {}

    def check_packing(self, model: torch.nn.Module, forward=None) -> None:
        """Sets ``self.pack`` from ``model.sequence_packing`` and a check of ``model`` (rlhf_ray.models.packing)."""
        self.pack = use_packing(model, self.cfg.model.sequence_packing, f"{self.role}-{self.rank}", forward)

    def map_forward(self, batch: Batch, fn, per_token: bool = False) -> torch.Tensor:
        """``fn`` over the batch in this role's scoring micro-batches (rows, or a token budget)."""
        r = getattr(self.cfg, self.role)
        return map_micro_batches(batch, r.micro_batch_samples_per_actor, fn, per_token, r.micro_batch_tokens_per_actor)

    def peak_memory_gib(self) -> float:
        """The most memory this actor has held: its GPU's allocated peak, or on CPU the process's peak RSS."""
        if torch.cuda.is_available():
            return torch.cuda.max_memory_allocated() / 2**30
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB on Linux

    def identity(self) -> dict:
        """Where this actor runs: for placement checks, dashboards and failure messages."""
        ctx = ray.get_runtime_context()
        return {"role": self.role, "rank": self.rank, "pid": os.getpid(),
                "node_ip": ray.util.get_node_ip_address(), "node_id": ctx.get_node_id(),
                "gpu_ids": ray.get_gpu_ids()}


def seed_everything(seed: int) -> None:
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
