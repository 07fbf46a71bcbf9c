"""The config: one strict schema, split by area, and how a run's config is read.

    base.py        Strict (the base of every section: unknown keys and wrong types are errors), ConfigError
    roles.py       each role's section: resources, the policy model, rollout, trainable roles and LoRA,
                   reference, reward, environment actors
    algorithm.py   hyper-parameters of the algorithms: PPO and its KL penalty, offline losses, RAFT
    evaluation.py  judged evaluation, synthetic data, iterative DPO's rounds
    run.py         the run as a whole: task (prompts), trainer, sync, logging, Ray, placement
    schema.py      the root Config and every rule that reads more than one section
    loading.py     defaults → YAML file → ``a.b=c`` overrides; the generated table (docs/config.md)
    imports.py     objects the config names by import path (rewards, environments, tools)

Everything a caller needs is importable from here (``from rlhf_ray.config import Config``).
"""

from rlhf_ray.config.algorithm import KLConfig, OfflineConfig, PPOConfig, RaftConfig
from rlhf_ray.config.base import ConfigError, Strict
from rlhf_ray.config.evaluation import PAIRWISE_TEMPLATE, CompareConfig, IterativeConfig, SynthesizeConfig
from rlhf_ray.config.loading import config_table, load_config, save_config
from rlhf_ray.config.roles import (DEFAULT_POLICY, LORA_TARGETS, ROLE_SECTIONS, VLLM_LORA_RANKS, EnvConfig,
                                   LoraConfig, ModelConfig, ReferenceConfig, RewardConfig, RoleResources,
                                   RolloutConfig, ScoringBudget, TrainableRole)
from rlhf_ray.config.run import LoggingConfig, PlacementConfig, RayConfig, SyncConfig, TaskConfig, TrainerConfig
from rlhf_ray.config.schema import READ_INSTEAD, Config

__all__ = ["KLConfig", "OfflineConfig", "PPOConfig", "RaftConfig", "ConfigError", "Strict", "PAIRWISE_TEMPLATE",
           "CompareConfig", "IterativeConfig", "SynthesizeConfig", "config_table", "load_config", "save_config",
           "DEFAULT_POLICY", "LORA_TARGETS", "ROLE_SECTIONS", "VLLM_LORA_RANKS", "EnvConfig", "LoraConfig",
           "ModelConfig", "ReferenceConfig", "RewardConfig", "RoleResources", "RolloutConfig", "ScoringBudget",
           "TrainableRole", "LoggingConfig", "PlacementConfig", "RayConfig", "SyncConfig", "TaskConfig",
           "TrainerConfig", "READ_INSTEAD", "Config"]
