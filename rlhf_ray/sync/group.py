"""The weight-sync group: the learner's rank 0 (rank 0, the source) and every rollout engine worker.

A process group of its own, made without torch.distributed's global state: the learner's process
already holds DeepSpeed's default group and each vLLM worker holds vLLM's, and a process has only one
default group. That is also why Ray's collective groups do not fit here: ``ray.util.collective``'s
torch-gloo group calls ``init_process_group`` (the default group; in a process that has one it makes
a subgroup of *that* world instead), rendezvouses over env:// (listening on every interface), and
reaches only Ray actors, while vLLM's tensor-parallel workers are plain processes of the engine.

The same code is gloo on CPU and NCCL on GPU (``torch.cuda.is_available()``). The store listens on
the learner node's address only (rlhf_ray.cluster.rendezvous); gloo binds to each member's node address.
"""

from __future__ import annotations

import os
from datetime import timedelta

import torch
import torch.distributed as dist

from rlhf_ray.cluster.rendezvous import is_loopback, tcp_store


CHAIN_CHUNK_BYTES = 8 * 2**20  # gloo chain's unit: small enough to pipeline, large enough to stream


class WeightGroup:
    def __init__(self, addr: str, port: int, rank: int, world_size: int, timeout_s: float, local_addr: str,
                 held=None, chunk_bytes: int = CHAIN_CHUNK_BYTES):
        """Joins the group whose store rank 0 serves at ``addr:port`` (``held``: the socket rank 0
        bound for it). ``local_addr``: this member's node address, where gloo listens."""
        self.rank, self.world_size, self.chunk_bytes = rank, world_size, chunk_bytes
        store = dist.PrefixStore("rlhf_ray_weights", tcp_store(addr, port, world_size, rank, timeout_s, held))
        timeout = timedelta(seconds=timeout_s)
        if torch.cuda.is_available():
            self.device = torch.device("cuda", torch.cuda.current_device())
            if is_loopback(addr):
                os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
            options = dist.ProcessGroupNCCL.Options()
            options._timeout = timeout
            self.pg = dist.ProcessGroupNCCL(store, rank, world_size, options)
        else:
            self.device = torch.device("cpu")
            options = dist.ProcessGroupGloo._Options()
            options._timeout = timeout
            options._devices = [dist.ProcessGroupGloo.create_device(hostname=local_addr)]
            self.pg = dist.ProcessGroupGloo(store, rank, world_size, options)

    def broadcast(self, buffer: torch.Tensor) -> None:
        """``buffer`` from rank 0 into every member's ``buffer`` (same size and dtype everywhere).

        NCCL pipelines its own broadcast over a ring or tree. Gloo's broadcast sends the whole buffer
        from the root to every member in turn (measured: the learner's node sends N copies for N
        engines), so on gloo the buffer goes down a chain instead, rank 0 → 1 → ... → N-1, in chunks:
        each member forwards chunk k while it receives chunk k+1. Every node sends the buffer once,
        and the time grows by one chunk per member instead of one buffer."""
        if self.device.type == "cuda" or self.world_size <= 2:
            opts = dist.BroadcastOptions()
            opts.rootRank = 0
            self.pg.broadcast([buffer], opts).wait()
            return
        chunks = buffer.split(self.chunk_bytes)
        sends = []
        for tag, chunk in enumerate(chunks):
            if self.rank > 0:
                self.pg.recv([chunk], self.rank - 1, tag).wait()
            if self.rank < self.world_size - 1:
                sends.append(self.pg.send([chunk], self.rank + 1, tag))
        for work in sends:
            work.wait()

    def close(self) -> None:
        try:
            self.pg.shutdown()
        except (AttributeError, RuntimeError):  # older torch or an already broken group: nothing to release
            pass
