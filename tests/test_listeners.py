"""Nothing a run's actors open listens beyond loopback when Ray is local (docs/reliability.md).

A tiny PPO run's five roles are started (learner and critic with two DeepSpeed ranks each, so their
rendezvous store and gloo pairs are up; vLLM rollout), and every TCP socket that their processes, and
any process they started, listen on must be bound to 127.0.0.0/8 or ::1. A wildcard (0.0.0.0, ::)
or the machine's network address would accept connections from other hosts for the whole run.
"""

from __future__ import annotations

import ipaddress
import os
import socket

import pytest

from conftest import tiny_overrides
from rlhf_ray.config.loading import load_config
from rlhf_ray.roles.base import Worker


def _socket_inodes(pid: int) -> set[str]:
    inodes = set()
    try:
        fds = os.listdir(f"/proc/{pid}/fd")
    except OSError:  # the process ended
        return inodes
    for fd in fds:
        try:
            link = os.readlink(f"/proc/{pid}/fd/{fd}")
        except OSError:
            continue
        if link.startswith("socket:["):
            inodes.add(link[len("socket:["):-1])
    return inodes


def _address(hex_addr: str) -> tuple[str, int]:
    """'0100007F:1F90' (/proc/net/tcp) or 32 hex digits:port (tcp6) → ('127.0.0.1', 8080). The
    address is stored as 32-bit words in host byte order (little-endian on the machines we run on)."""
    host, port = hex_addr.split(":")
    raw = b"".join(bytes.fromhex(host[i:i + 8])[::-1] for i in range(0, len(host), 8))
    return str(ipaddress.ip_address(raw)), int(port, 16)


def listening_sockets(pids: list[int]) -> dict[int, list[tuple[str, int]]]:
    """pid → the (address, port) of each TCP socket (IPv4 and IPv6) it holds in the listening state."""
    owner = {inode: pid for pid in pids for inode in _socket_inodes(pid)}
    found: dict[int, list[tuple[str, int]]] = {pid: [] for pid in pids}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as f:
            for line in f.read().splitlines()[1:]:
                fields = line.split()
                local, state, inode = fields[1], fields[3], fields[9]
                if state == "0A" and inode in owner:  # 0A: TCP_LISTEN
                    found[owner[inode]].append(_address(local))
    return found


def with_descendants(pids: list[int]) -> list[int]:
    """The processes and every process they started (vLLM or DeepSpeed may spawn helpers)."""
    seen, todo = [], list(pids)
    while todo:
        pid = todo.pop()
        if pid in seen:
            continue
        seen.append(pid)
        try:
            tasks = os.listdir(f"/proc/{pid}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{pid}/task/{tid}/children") as f:
                    todo.extend(int(c) for c in f.read().split())
            except OSError:
                pass
    return seen


def is_loopback(addr: str) -> bool:
    """127.0.0.0/8, ::1, and 127.x written IPv4-mapped (::ffff:127.0.0.1, how Ray's gRPC servers bind)."""
    ip = ipaddress.ip_address(addr)
    return (getattr(ip, "ipv4_mapped", None) or ip).is_loopback


def test_the_helper_sees_wildcard_and_loopback_listeners():
    with socket.socket() as lo, socket.socket(socket.AF_INET6) as anywhere:
        lo.bind(("127.0.0.1", 0))
        lo.listen()
        anywhere.bind(("::", 0))
        anywhere.listen()
        mine = listening_sockets([os.getpid()])[os.getpid()]
        assert ("127.0.0.1", lo.getsockname()[1]) in mine
        assert ("::", anywhere.getsockname()[1]) in mine


def test_a_runs_actors_listen_on_loopback_only(local_ray, tiny_policy, tmp_path):
    pytest.importorskip("vllm")
    from rlhf_ray.trainers.ppo import PPOTrainer

    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path, "learner.num_actors=2", "critic.num_actors=2",
                                               "learner.micro_batch_samples_per_actor=2",
                                               "critic.micro_batch_samples_per_actor=2", "sync.transport=collective"))
    trainer = PPOTrainer.from_config(cfg)  # every role's actors up, groups formed, models loaded
    try:
        trainer.sync_weights(0)  # the weight group of the learner and the engines formed too
        where = {}
        for role, group in trainer.groups.items():
            for ident in group.get(group.call(Worker.identity), f"{role} identity"):
                where[ident["pid"]] = f"{role}-{ident['rank']}"
        pids = with_descendants(list(where))
        found = listening_sockets(pids)
    finally:
        trainer.shutdown()
    print({where.get(pid, f"child {pid}"): sorted(socks) for pid, socks in found.items()})
    exposed = {where.get(pid, f"child {pid}"): [s for s in socks if not is_loopback(s[0])]
               for pid, socks in found.items()}
    exposed = {who: socks for who, socks in exposed.items() if socks}
    assert len(where) == sum(g.size for g in trainer.groups.values())  # every actor answered
    assert not exposed, f"listening beyond loopback: {exposed}"
