"""Sidecar groups: actors of a role serving another model than the run's, beside the run's own.

A judged comparison needs the baseline's answers (rollout engines on the baseline's folder) and a
judge (a reward model, or an LLM on rollout engines); synthetic data needs several models' samples.
Each is a WorkerGroup of an existing role class, started with a copy of the run's config that
describes the sidecar (its model's prompt budget, no LoRA, no environment, no colocation) and
given a name of its own, so it never collides with the run's actors. On machines without GPUs a
sidecar reserves no logical CPUs: it runs between the run's stages, while those wait, and a run
that fills the machine's CPUs (PPO's five roles on two cores) must still be able to start one.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_ray.cluster.groups import WorkerGroup, shutdown_groups, start_groups
from rlhf_ray.config import Config, EnvConfig, PlacementConfig, RewardConfig


def sidecar_config(cfg: Config, role: str, max_prompt_tokens: int | None = None, max_new_tokens: int | None = None,
                   reward: RewardConfig | None = None) -> Config:
    """The run's config as a sidecar of ``role`` sees it."""
    res = getattr(cfg, role)
    cpus = res.num_cpus_per_actor if res.num_gpus_per_actor else 0.0
    update = {"placement": PlacementConfig(), "env": EnvConfig(),
              "learner": cfg.learner.model_copy(update={"lora": None}),
              "reference": cfg.reference.model_copy(update={"source": "actor"}),
              role: res.model_copy(update={"num_cpus_per_actor": cpus})}
    if max_prompt_tokens is not None:
        update["model"] = cfg.model.model_copy(update={"max_prompt_tokens": max_prompt_tokens})
    if max_new_tokens is not None:
        update["rollout"] = update["rollout"].model_copy(update={"max_new_tokens": max_new_tokens})
    if reward is not None:
        update["reward"] = reward.model_copy(update={"num_cpus_per_actor": cpus})
    return cfg.model_copy(update=update)


@dataclass
class Sidecar:
    group: WorkerGroup
    model_path: str

    @classmethod
    def start(cls, cfg: Config, role: str, worker_cls: type, model_path: str, name: str, **describe) -> "Sidecar":
        """Started and loaded with ``model_path``; ``name`` prefixes its actors' names."""
        side = sidecar_config(cfg, role, **describe)
        group = start_groups(side, {role: worker_cls}, name, sidecar=True)[role]
        try:
            group.get(group.call(worker_cls.init_model, model_path), f"{name} {role} model load")
        except BaseException:
            shutdown_groups({role: group})
            raise
        return cls(group, model_path)

    def shutdown(self) -> None:
        shutdown_groups({self.group.role: self.group})
