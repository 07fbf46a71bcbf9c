"""The config sections of the algorithms' hyper-parameters: the online policy-gradient family (PPO and
its KL penalty), the offline losses, and RAFT's rounds."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, model_validator

from rlhf_ray.algorithms import LossAgg
from rlhf_ray.config.base import Strict


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
    clip_eps: float = Field(0.2, gt=0, description=(
        "Policy ratio clip ε (lower side, and upper unless clip_eps_high); GSPO clips its sequence ratio, CISPO its weight."))
    clip_eps_high: float | None = Field(None, gt=0, description="Upper ratio clip; empty = clip_eps.")
    value_clip_eps: float = Field(0.2, gt=0, description="Value-function clip around the old values.")
    value_loss_coef: float = Field(1.0, gt=0, description="Weight of the critic's loss.")
    gamma: float = Field(1.0, ge=0, le=1, description="GAE discount.")
    lam: float = Field(0.95, ge=0, le=1, description="GAE λ.")
    whiten_advantages: bool = Field(True, description="Normalise advantages over the batch's valid tokens.")
    loss_agg: Literal["auto"] | LossAgg = Field("token-mean", description=(
        "How token losses are averaged over the whole optimiser step (all micro-batches and ranks): token-mean, "
        "seq-mean-token-mean (each sequence's mean, then over sequences) or seq-mean-token-sum-norm (token sums "
        "over sequences × the response horizon: rollout.max_new_tokens, or max(rollout.max_new_tokens, "
        "env.max_total_tokens) with env.*; Dr. GRPO); auto = as if unset (docs/methods/online_rl.md)."))
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
