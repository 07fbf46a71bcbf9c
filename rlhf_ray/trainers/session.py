"""What every algorithm's controller does before its loop: Ray (model paths: rlhf_ray.models.loading.resolve_model_path)."""

from __future__ import annotations

import os
import time

import ray
from ray._private import ray_constants

from rlhf_ray.config import Config
from rlhf_ray.runs.logs import route_driver_logs


def init_ray(cfg: Config) -> None:
    """Joins the cluster ``ray.address`` names (rlhf_ray.config.RayConfig.cluster_address), or starts a
    private local Ray bound to 127.0.0.1 with the machine's CPUs (the preflight checked the layout
    fits them) unless ray.local_num_cpus says otherwise."""
    if ray.is_initialized():
        return
    log_file = route_driver_logs(cfg.trainer.run_dir, cfg.logging.verbose)
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false"}}
    address = cfg.ray.cluster_address()
    if address:
        context = ray.init(address=address, namespace=cfg.ray.namespace, runtime_env=env)
    else:
        context = start_local_ray(num_cpus=cfg.ray.local_num_cpus or os.cpu_count() or 1,
                                  num_gpus=cfg.ray.local_num_gpus, dashboard=cfg.ray.local_dashboard,
                                  namespace=cfg.ray.namespace, runtime_env=env)
    if log_file:  # Ray's own start-up lines went there: the one a user needs, here
        where = f"cluster {address}" if address else "local Ray"
        dashboard = f", dashboard http://{context.dashboard_url}" if context.dashboard_url else ""
        print(f"[ray] {where}{dashboard}; library logs in {log_file.parent}", flush=True)


def start_local_ray(num_cpus: int, num_gpus: int | None = None, dashboard: bool = False, **kwargs):
    """A single-node Ray whose every server (GCS, raylet, workers, dashboard) listens on 127.0.0.1.

    `_node_ip_address="127.0.0.1"` alone is not enough: Ray swaps a loopback address for the
    machine's routable one unless its "cluster mode" is off, which this env var (read by Ray's
    child processes) and the constant (read by this process, already imported) turn off."""
    os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"
    ray_constants.ENABLE_RAY_CLUSTER = False
    # address="local": always a new instance, never the cluster a `ray start` on this machine left behind
    return ray.init(address="local", _node_ip_address="127.0.0.1", dashboard_host="127.0.0.1", num_cpus=num_cpus,
             num_gpus=num_gpus, include_dashboard=dashboard, **kwargs)


def run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")

