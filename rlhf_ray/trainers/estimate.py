"""From one step's scores and log-probs to advantages, plus group statistics.

Pure tensor code on the controller (no actors). The estimator is the algorithm's row's
(rlhf_ray.algorithms); its own normalisation (``ppo.whiten_advantages``) is part of the estimator
(rlhf_ray.algos.advantages), so nothing here depends on which algorithm runs.
"""

from __future__ import annotations

from torch import Tensor

from rlhf_ray.algos import ADVANTAGE_ESTIMATORS, kl_penalized_rewards
from rlhf_ray.config import Config


def estimate_advantages(cfg: Config, scores: Tensor, token_rewards: Tensor, seq_kl: Tensor, mask: Tensor,
                        beta: float, values: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(advantages, returns) [B, T] by the algorithm's estimator.

    ``token_rewards`` already hold −β·KL per token when ``ppo.kl.placement=reward``. Sequence-score
    estimators (GRPO, RLOO, ...) read sequence scores instead, so there the same penalty is applied
    per sequence, s − β·ΣKL (the RLOO paper's reward); with ``placement=loss`` the learner adds it
    to the loss instead."""
    ppo, estimator = cfg.ppo, cfg.spec.estimator
    if estimator == "gae" and values is None:
        raise ValueError(f"algorithm={cfg.algorithm} needs the critic's values")
    seq_scores = scores - beta * seq_kl if ppo.kl.placement == "reward" else scores
    return ADVANTAGE_ESTIMATORS.get(estimator)(
        token_rewards=token_rewards, values=values, scores=seq_scores, mask=mask, gamma=ppo.gamma, lam=ppo.lam,
        group_size=ppo.samples_per_prompt, normalize_std=ppo.whiten_advantages)


def penalize_and_estimate(cfg: Config, batch: dict[str, Tensor], scores: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """KL-penalised token rewards (β·KL leaves the reward when ppo.kl.placement=reward), then
    advantages and returns into ``batch``. Returns the per-token KL and its sum per sequence."""
    ppo, mask = cfg.ppo, batch["response_mask"]
    token_rewards, kl = kl_penalized_rewards(scores, batch["old_logprobs"], batch["ref_logprobs"], mask,
                                             beta if ppo.kl.placement == "reward" else 0.0, ppo.kl.estimator)
    seq_kl = (kl * mask).sum(-1)
    batch["advantages"], batch["returns"] = estimate_advantages(cfg, scores, token_rewards, seq_kl, mask, beta,
                                                                batch.get("old_values"))
    return kl, seq_kl


def group_metrics(scores: Tensor, group_size: int) -> dict[str, float]:
    """Statistics of each prompt's n samples (consecutive rows). A group whose scores are all equal
    gives GRPO/RLOO zero advantage: ``zero_signal_frac`` is the share of prompts that taught nothing."""
    if group_size < 2:
        return {}
    g = scores.float().reshape(-1, group_size)
    best, worst = g.max(dim=1).values, g.min(dim=1).values
    return {
        "groups/zero_signal_frac": float(((best - worst).abs() <= 1e-6).float().mean()),
        "groups/score_std_mean": float(g.std(dim=1).mean()),
        "groups/best_mean": float(best.mean()),
        "groups/worst_mean": float(worst.mean()),
    }
