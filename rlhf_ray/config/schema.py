"""The one config schema of rlhf_ray: the sections together, and the rules that span sections.

Every field, its default and its one-line doc live in its section's class (rlhf_ray.config.roles,
.algorithm, .run, .evaluation) and nowhere else; here are the root ``Config`` and every check that
reads more than one section. A run's config is the defaults, then a YAML file, then ``a.b=c``
overrides from the command line (rlhf_ray.config.loading). Unknown keys and wrong types are errors
that name the key. ``rlhf-ray config-doc`` prints this schema as a table.

Batch-size fields say what they count in their name: ``prompts`` or ``samples``, ``global`` (the
whole step, all actors together) or ``per_actor``.
"""

from __future__ import annotations

import difflib

from pydantic import Field, field_validator, model_validator

from rlhf_ray.algorithms import ALGORITHMS, AlgorithmSpec
from rlhf_ray.config.algorithm import KLConfig, OfflineConfig, PPOConfig, RaftConfig
from rlhf_ray.config.base import Strict
from rlhf_ray.config.evaluation import IterativeConfig, SynthesizeConfig
from rlhf_ray.config.roles import (LORA_TARGETS, ROLE_SECTIONS, VLLM_LORA_RANKS, EnvConfig, ModelConfig,
                                   ReferenceConfig, RewardConfig, RolloutConfig, TrainableRole)
from rlhf_ray.config.run import LoggingConfig, PlacementConfig, RayConfig, SyncConfig, TaskConfig, TrainerConfig

# The keys some algorithm's row sets (AlgorithmSpec.defaults): resolved per algorithm, printed at start.
ROW_KEYS = tuple(sorted({key for spec in ALGORITHMS.values() for key, _ in spec.defaults}))

# Keys a kind of loop never reads, and the key it reads instead: setting one is an error, not a no-op.
READ_INSTEAD = {
    "online": {"offline.max_steps": "trainer.total_steps", "offline.eval_every": "trainer.eval_every"},
    "offline": {"trainer.total_steps": "offline.max_steps", "trainer.eval_every": "offline.eval_every"},
    "reward_model": {"trainer.total_steps": "offline.max_steps", "trainer.eval_every": "offline.eval_every"},
    "raft": {"trainer.total_steps": "raft.rounds", "offline.max_steps": "raft.rounds"},
    "iterative": {"trainer.total_steps": "iterative.rounds", "offline.max_steps": "iterative.rounds"},
}


class Config(Strict):
    algorithm: str = Field("ppo", description="One of " + ", ".join(ALGORITHMS) + " (rlhf_ray/algorithms.py).")
    model: ModelConfig = Field(default_factory=ModelConfig, description="The policy model.")
    rollout: RolloutConfig = Field(default_factory=RolloutConfig, description="Rollout engines.")
    learner: TrainableRole = Field(default_factory=lambda: TrainableRole(lr=1e-6), description="Policy trainer.")
    critic: TrainableRole = Field(default_factory=lambda: TrainableRole(lr=5e-6), description="Value model trainer.")
    reference: ReferenceConfig = Field(default_factory=ReferenceConfig, description="Frozen reference policy.")
    reward: RewardConfig = Field(default_factory=RewardConfig, description="Reward function or model.")
    env: EnvConfig = Field(default_factory=EnvConfig, description="Multi-turn environments and tools (docs/environments.md).")
    ppo: PPOConfig = Field(default_factory=PPOConfig, description="PPO hyper-parameters.")
    offline: OfflineConfig = Field(default_factory=OfflineConfig, description="Data and losses of offline methods.")
    task: TaskConfig = Field(default_factory=TaskConfig, description="Prompts and held-out set.")
    raft: RaftConfig = Field(default_factory=RaftConfig, description="Best-of-n sampling: RAFT rounds and the best-of-n command.")
    synthesize: SynthesizeConfig = Field(default_factory=SynthesizeConfig, description=(
        "Synthetic preference data: the synthesize command and iterative DPO's pairs (docs/methods/synthetic.md)."))
    iterative: IterativeConfig = Field(default_factory=IterativeConfig, description="Iterative DPO's rounds.")
    trainer: TrainerConfig = Field(default_factory=TrainerConfig, description="Loop length, seed, outputs.")
    sync: SyncConfig = Field(default_factory=SyncConfig, description="Weight sync from the learner to the rollout engines.")
    logging: LoggingConfig = Field(default_factory=LoggingConfig, description="Metrics sinks.")
    ray: RayConfig = Field(default_factory=RayConfig, description="Where to run.")
    placement: PlacementConfig = Field(default_factory=PlacementConfig, description="Which roles share resources.")

    @field_validator("algorithm")
    @classmethod
    def _known_algorithm(cls, v: str) -> str:
        if v not in ALGORITHMS:
            near = difflib.get_close_matches(v, ALGORITHMS, n=1)
            raise ValueError(f"unknown algorithm {v!r}" + (f" (did you mean {near[0]!r}?)" if near else "")
                             + f"; choose one of: {', '.join(ALGORITHMS)}")
        return v

    @property
    def spec(self) -> AlgorithmSpec:
        """The algorithm's row of rlhf_ray.algorithms.ALGORITHMS."""
        return ALGORITHMS[self.algorithm]

    @property
    def is_online(self) -> bool:
        return self.spec.has_rollout

    @property
    def max_response_tokens(self) -> int:
        """The longest response a rollout returns: one turn, or a multi-turn trajectory's whole budget."""
        return max(self.rollout.max_new_tokens, self.env.max_total_tokens) if self.env.enabled else self.rollout.max_new_tokens

    @property
    def roles(self) -> tuple[str, ...]:
        """The roles this run starts actors for: the algorithm's, with environment actors when an environment
        is set, and without reward actors when the environment's rewards are the score (reward.kind=env)."""
        roles = self.spec.roles
        if self.env.enabled:
            roles += ("env",)
        if self.reward.kind == "env":
            roles = tuple(r for r in roles if r != "reward")
        if self.reference.source == "learner_base":
            roles = tuple(r for r in roles if r != "reference")
        return roles

    @property
    def lora_sync(self) -> str | None:
        """How a LoRA learner's weights reach the engines (sync.lora resolved): "adapter" where vLLM can serve
        the adapter (its ranks and projection modules), else "merged"; None without learner.lora."""
        return self.lora_sync_choice()[0]

    def lora_sync_choice(self) -> tuple[str | None, str]:
        """(sync.lora resolved, why), printed at start."""
        lora = self.learner.lora
        if lora is None or "rollout" not in self.roles:
            return None, "no LoRA learner feeding rollout engines"
        if self.sync.lora != "auto":
            return self.sync.lora, f"sync.lora={self.sync.lora}"
        why_not = self._adapter_unservable()
        if why_not:
            return "merged", why_not
        if not self.rollout.num_gpus_per_actor:
            return "merged", ("engines on CPU: vLLM's CPU LoRA path copies the adapter's weights for every token, "
                              "generation runs several times slower (docs/methods/lora.md); sync.lora=adapter forces it")
        return "adapter", "vLLM serves this adapter on GPU (sync.lora=auto)"

    def _adapter_unservable(self) -> str | None:
        """Why the engines cannot serve learner.lora's adapter at all (None: they can)."""
        lora = self.learner.lora
        if self.rollout.backend != "vllm":
            return f"rollout.backend={self.rollout.backend} serves no adapters"
        if lora.rank not in VLLM_LORA_RANKS:
            return f"vLLM serves LoRA ranks {list(VLLM_LORA_RANKS)}, not learner.lora.rank={lora.rank}"
        if set(lora.targets) - set(LORA_TARGETS):
            return (f"vLLM serves adapters on {list(LORA_TARGETS)}, not on "
                    f"{sorted(set(lora.targets) - set(LORA_TARGETS))} (learner.lora.targets)")
        return None

    @property
    def optimizer_batch_global(self) -> int:
        """Samples (pairs for preference losses) per optimiser step, all trainer actors together."""
        return self.ppo.minibatch_samples_global if self.spec.update == "policy" else self.offline.batch_samples_global

    def is_set(self, key: str) -> bool:
        """Whether ``key`` ('a.b') was given in the file or overrides with a value other than its
        default (a saved config.yaml lists every key; only the changed ones were asked for). A value
        the algorithm's row filled in (``algorithm_settings``) was not given."""
        return self._given(key) and _value(self, key) != _value(Config.model_construct(), key)

    def _given(self, key: str) -> bool:
        """Whether ``key`` was in the file or overrides at all (whatever its value)."""
        node = self
        for name in key.split("."):
            if node is None or name not in node.model_fields_set:
                return False
            node = getattr(node, name)
        return True

    def algorithm_settings(self) -> list[tuple[str, object, str]]:
        """(key, value in force, where it comes from) of every key an algorithm's row may set (ROW_KEYS):
        printed at start, so a run says which clip range and aggregation it trains with."""
        row = dict(self.spec.defaults)
        return [(key, _value(self, key), "given" if self._given(key) else
                 f"{self.algorithm}'s default" if key in row else "default") for key in ROW_KEYS]

    @model_validator(mode="after")
    def _algorithm_defaults(self) -> "Config":
        """Fills each ROW_KEYS key left unset (or auto) with the row's value, else the schema's default,
        without marking it given (it stays unset for is_set, a saved config lists it); then refuses a
        value of a locked key that is no longer the algorithm. Runs again on assignment: idempotent."""
        row = dict(self.spec.defaults)
        for key in ROW_KEYS:
            if not self._given(key) or _value(self, key) == "auto":
                _fill(self, key, row.get(key, _value(Config.model_construct(), key)))
        for key, why in self.spec.locked:
            if _value(self, key) != row[key]:
                raise ValueError(f"algorithm={self.algorithm} with {key}={_value(self, key)}: {why}. Unset {key} "
                                 f"(algorithm={self.algorithm} uses {row[key]}) or choose another algorithm")
        return self

    def unused_settings(self) -> list[str]:
        """Settings changed from their defaults in sections this algorithm's loop never reads."""
        spec = self.spec
        unused = [s for s in ROLE_SECTIONS if s not in self.roles]
        if spec.update != "policy":
            unused.append("ppo")
        out = []
        for s in unused:
            keys = sorted(k for k in getattr(self, s).model_fields_set
                          if self.is_set(f"{s}.{k}") and f"{s}.{k}" not in ("reward.kind", "env.environment", "env.tools", "reference.source"))
            if keys:
                out.append(f"{s}.{', '.join(keys)}: algorithm={self.algorithm} "
                           + (f"starts no {s}" if s in ROLE_SECTIONS else "does not read them"))
        return out

    @model_validator(mode="after")
    def _keys_the_loop_reads(self) -> "Config":
        for key, instead in READ_INSTEAD[self.spec.controller].items():
            if self.is_set(key):
                raise ValueError(f"{key} is not read by algorithm={self.algorithm} ({self.spec.controller} loop): "
                                 f"set {instead} instead")
        return self

    @model_validator(mode="after")
    def _environment_fits(self) -> "Config":
        if self.reward.kind == "env" and not self.env.enabled:
            raise ValueError("reward.kind=env scores trajectories by their environment's rewards: set env.environment or env.tools")
        if self.env.enabled and self.spec.controller != "online":
            raise ValueError(f"env.* (multi-turn rollouts) runs with the online algorithms (PPO, GRPO, RLOO, ...), "
                             f"not algorithm={self.algorithm}")
        if self.env.enabled and self.trainer.eval.baseline:
            raise ValueError("trainer.eval.baseline judges single answers; with env.* (multi-turn) the held-out "
                             "evaluation reports the environments' own accuracy (eval/env/*): unset trainer.eval.baseline")
        if self.env.enabled and self.rollout.backend != "vllm":
            raise ValueError("env.* (multi-turn rollouts) steps the vLLM engine turn by turn: set rollout.backend=vllm")
        return self

    @model_validator(mode="after")
    def _iterative_fits(self) -> "Config":
        if self.spec.controller != "iterative":
            return self
        k, prompts, batch = self.synthesize.samples_per_prompt, self.iterative.prompts_per_round, self.offline.batch_samples_global
        if k < 2:
            raise ValueError(f"algorithm={self.algorithm} pairs the policy's own answers to each prompt: "
                             f"synthesize.samples_per_prompt={k} must be ≥ 2")
        if prompts < batch:
            raise ValueError(f"iterative.prompts_per_round={prompts} makes at most one pair per prompt, fewer than the "
                             f"offline.batch_samples_global={batch} pairs of one DPO step: no round would update; raise "
                             f"iterative.prompts_per_round or lower offline.batch_samples_global")
        return self

    @model_validator(mode="after")
    def _lora_fits(self) -> "Config":
        if self.reference.source == "learner_base" and self.learner.lora is None:
            raise ValueError("reference.source=learner_base reads the reference from the learner with its adapters "
                             "disabled: set learner.lora (e.g. learner.lora.rank=16), or reference.source=actor")
        why_not = self._adapter_unservable() if self.sync.lora == "adapter" and self.learner.lora else None
        if why_not:
            raise ValueError(f"sync.lora=adapter: {why_not}; set rollout.backend=vllm with a rank and targets vLLM "
                             f"serves, or sync.lora=merged")
        return self

    @model_validator(mode="after")
    def _check_batches(self) -> "Config":
        spec = self.spec
        if spec.update == "policy":
            samples = self.ppo.prompts_per_step_global * self.ppo.samples_per_prompt
            if samples % self.ppo.minibatch_samples_global:
                raise ValueError(
                    f"ppo.minibatch_samples_global={self.ppo.minibatch_samples_global} must divide the samples per "
                    f"step (ppo.prompts_per_step_global × ppo.samples_per_prompt = {samples})")
        tp = self.rollout.tensor_parallel_size
        if tp > 1 and self.rollout.num_gpus_per_actor < tp:
            raise ValueError(f"rollout.tensor_parallel_size={tp} shards each engine over {tp} GPUs: set "
                             f"rollout.num_gpus_per_actor={tp} (now {self.rollout.num_gpus_per_actor:g})")
        if spec.group and self.ppo.samples_per_prompt < 2:
            raise ValueError(f"algorithm={self.algorithm} compares samples of one prompt: ppo.samples_per_prompt must be ≥ 2")
        if not self.is_online and not self.offline.train_file:
            raise ValueError(f"algorithm={self.algorithm} trains on a dataset: set offline.train_file")
        if spec.objective == "cdpo" and self.offline.label_smoothing == 0:
            raise ValueError("algorithm=cdpo needs offline.label_smoothing > 0 (e.g. 0.1); with 0 it is plain dpo")
        for role in ("learner", "critic", "reward"):
            r = getattr(self, role)
            if r.zero_stage == 3 and r.micro_batch_tokens_per_actor:
                raise ValueError(f"{role}.micro_batch_tokens_per_actor={r.micro_batch_tokens_per_actor} needs every rank "
                                 f"to run its own number of forwards, which {role}.zero_stage=3 cannot (its "
                                 f"parameter gathers are collective): set it to 0 or use zero_stage ≤ 2")
        key = "ppo.minibatch_samples_global" if spec.update == "policy" else "offline.batch_samples_global"
        for role in spec.trained_roles:
            r = getattr(self, role)
            per_actor, rem = divmod(self.optimizer_batch_global, r.num_actors)
            if rem or per_actor % r.micro_batch_samples_per_actor:
                raise ValueError(
                    f"{key}={self.optimizer_batch_global} must split evenly over {role}.num_actors={r.num_actors} "
                    f"actors into micro-batches of {role}.micro_batch_samples_per_actor={r.micro_batch_samples_per_actor}")
        return self


def _value(node, key: str):
    """The value at dotted ``key`` (None below an unset optional section)."""
    for name in key.split("."):
        node = None if node is None else getattr(node, name)
    return node


def _fill(cfg: Config, key: str, value) -> None:
    """Sets ``key`` to ``value``, validated by its field, without marking it given: the sections on the
    way are copied (a section object passed in stays as it was), the leaf left out of model_fields_set."""
    *sections, leaf = key.split(".")
    node = cfg
    for name in sections:
        section = getattr(node, name).model_copy()
        object.__setattr__(node, name, section)
        node = section
    node.__pydantic_validator__.validate_assignment(node, leaf, value)
    node.__pydantic_fields_set__.discard(leaf)
