"""Where a group of processes meets: a TCP store served by rank 0 on its node's address only.

torch's own rendezvous (env://, what deepspeed.init_distributed and Ray's collective groups use)
listens on every interface, unauthenticated, for as long as the group lives. Here rank 0 binds the
port on the address the others will dial (so nothing can take it between choosing and serving it)
and hands the bound socket to the store. Used by the DeepSpeed groups (rlhf_ray.roles.ds_worker)
and the weight-sync group of the learner and the rollout engines (rlhf_ray.sync.group).
"""

from __future__ import annotations

import ipaddress
import socket
from datetime import timedelta

import torch


def bind(addr: str, port: int = 0) -> socket.socket:
    """A socket bound to ``addr:port`` (0 = any free port), not yet listening."""
    s = socket.socket(socket.AF_INET6 if ":" in addr else socket.AF_INET)
    s.bind((addr, port))
    return s


def is_loopback(addr: str) -> bool:
    try:
        return ipaddress.ip_address(addr).is_loopback
    except ValueError:  # a host name: resolved by torch, not on loopback as far as we know
        return False


def tcp_store(addr: str, port: int, world_size: int, rank: int, timeout_s: float,
              held: socket.socket | None = None) -> torch.distributed.TCPStore:
    """The group's store: rank 0 serves it on ``held`` (the socket it bound for ``port``; bound anew
    when absent), the others connect to it."""
    listen_fd = None
    if rank == 0:
        if held is None or held.getsockname()[1] != port:
            held = bind(addr, port)
        listen_fd = held.detach()  # the store's server owns the socket from here on
    return torch.distributed.TCPStore(addr, port, world_size, is_master=rank == 0,
                                      timeout=timedelta(seconds=timeout_s), master_listen_fd=listen_fd)
