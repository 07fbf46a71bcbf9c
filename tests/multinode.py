"""A multi-node Ray on this machine, for tests: ``ray.cluster_utils.Cluster`` starts one raylet and
object store per node, all on 127.0.0.1. Each node gets its own logical CPUs and custom resources
(``{"trainer": 1}``), so ``<role>.resources_per_actor`` pins roles to chosen nodes as on a real cluster.

A test process holds one Ray connection at a time: ``multinode_ray`` shuts down the session's local
Ray (conftest ``local_ray``) when it runs, and starts it again on the way out, so the tests after it,
in whatever order, find the Ray they expect. Everything the cluster writes (sockets, logs, its
``ray_current_cluster`` address file) goes to a private temp dir: an ``address="auto"`` elsewhere on the
machine never finds it, and its shutdown never deletes another Ray's address file.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import tempfile
import time
from dataclasses import dataclass, field

import psutil
import ray
from ray._private import ray_constants
from ray.cluster_utils import Cluster

from rlhf_ray.roles.base import free_port

NODE_CPUS = 2  # logical: each role asks 0.4 per actor (rlhf_ray.config.RoleResources)
# Small but above Ray's minimum (75 MiB): five nodes' stores beside vLLM engines in 24 GiB.
OBJECT_STORE_BYTES = 120 * 2**20
# A killed raylet is declared dead after period × threshold; Ray's defaults (3 s × 5) only slow the tests.
FAST_HEALTH_CHECKS = {"health_check_period_ms": 500, "health_check_failure_threshold": 4}


@dataclass
class TestCluster:
    cluster: Cluster
    nodes: dict[str, object]  # name → ray._private.node.Node
    node_ids: dict[str, str] = field(default_factory=dict)  # name → Ray node id (hex)

    __test__ = False  # not a pytest test class

    @property
    def address(self) -> str:
        return self.cluster.address

    def name_of(self, node_id: str) -> str:
        return next(name for name, nid in self.node_ids.items() if nid == node_id)

    def node_names(self, group) -> list[str]:
        """The node of each rank of a WorkerGroup, by name."""
        return [self.name_of(w["node_id"]) for w in group.get(group.call(group.worker_cls.identity), "identity")]

    def add(self, name: str, resources: dict[str, float]) -> None:
        """Another node joins (a replacement machine, an autoscaler's new node)."""
        node = self.cluster.add_node(num_cpus=NODE_CPUS, node_ip_address="127.0.0.1",
                                     object_store_memory=OBJECT_STORE_BYTES, resources=resources)
        self.nodes[name], self.node_ids[name] = node, node.node_id

    def kill(self, name: str, timeout_s: float = 60) -> None:
        """Loses node ``name`` as a machine is lost: its raylet, object store and every worker process on
        it SIGKILLed at once (Ray's own remove_node leaves workers running until they notice), then
        waits until the cluster has declared it dead."""
        node = self.nodes.pop(name)
        workers = [p for p in psutil.process_iter(["cmdline"])
                   if any(node._raylet_socket_name in a for a in (p.info["cmdline"] or []))]
        self.cluster.remove_node(node, allow_graceful=False)
        for p in workers:
            with contextlib.suppress(psutil.NoSuchProcess):
                p.send_signal(signal.SIGKILL)
        deadline = time.monotonic() + timeout_s
        while any(n["NodeID"] == self.node_ids[name] and n["Alive"] for n in ray.nodes()):
            if time.monotonic() > deadline:
                raise TimeoutError(f"node {name} still alive {timeout_s:g}s after its raylet was killed")
            time.sleep(0.5)


def head_ports() -> dict:
    """Ports of the head's dashboard and its agent: Ray's defaults (8265, 52365) are taken whenever
    another Ray runs on the machine."""
    return dict(include_dashboard=True, dashboard_host="127.0.0.1", dashboard_port=free_port(),
                dashboard_agent_listen_port=free_port())


@contextlib.contextmanager
def multinode_ray(nodes: dict[str, dict[str, float]], namespace: str = "rlhf_ray_tests"):
    """A cluster of ``nodes`` (name → custom resources; the first is the head, where this process's
    driver connects), this process connected to it. Yields a TestCluster."""
    from conftest import start_test_ray

    had_session_ray = ray.is_initialized()
    ray.shutdown()
    temp_dir = tempfile.mkdtemp(prefix="rmn-", dir="/tmp")  # short: socket paths must fit 107 bytes
    old_tmp = os.environ.get("RAY_TMPDIR")
    os.environ["RAY_TMPDIR"] = temp_dir  # where Cluster writes its address file and its nodes' sessions
    # Loopback addresses kept as given, as for the single-node test Ray (session.start_local_ray):
    # otherwise the driver looks for the GCS at the machine's routable address and waits forever.
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    common = dict(num_cpus=NODE_CPUS, node_ip_address="127.0.0.1", object_store_memory=OBJECT_STORE_BYTES)
    cluster, started = None, {}
    try:
        names = list(nodes)
        cluster = Cluster(initialize_head=True, head_node_args=dict(
            **common, resources=nodes[names[0]], _system_config=FAST_HEALTH_CHECKS, **head_ports()))
        started[names[0]] = cluster.head_node
        for name in names[1:]:
            started[name] = cluster.add_node(**common, resources=nodes[name])
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, namespace=namespace, log_to_driver=False,
                 runtime_env={"env_vars": {"TOKENIZERS_PARALLELISM": "false"}})
        tc = TestCluster(cluster, started)
        tc.node_ids = {name: node.node_id for name, node in started.items()}
        yield tc
    finally:
        ray.shutdown()
        if cluster is not None:
            cluster.shutdown()
        if old_tmp is None:
            os.environ.pop("RAY_TMPDIR", None)
        else:
            os.environ["RAY_TMPDIR"] = old_tmp
        shutil.rmtree(temp_dir, ignore_errors=True)
        if had_session_ray:
            start_test_ray()
