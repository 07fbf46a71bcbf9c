"""From one step's scores and log-probs to advantages, per online algorithm, plus group statistics.

Pure tensor code on the controller (no actors), so the per-algorithm rules are unit-tested:

    algorithm     estimator (rlhf_ray.algos)     what ppo.whiten_advantages does
    ppo           gae on KL-penalised tokens     whiten over the batch's response tokens
    grpo          grpo on sequence scores        divide by the group's std (false: Dr. GRPO, centre only)
    rloo          rloo on sequence scores        divide by the batch's std, no re-centring
    reinforce_pp  reinforce_pp on token rewards  whiten the returns over the batch (false: plain REINFORCE)

GRPO and RLOO are never re-centred over the batch: their advantages are already zero-mean within
each prompt's group, and re-centring would give a group whose samples all scored the same (no
signal) a non-zero advantage.
"""

from __future__ import annotations

import torch
from torch import Tensor

from rlhf_ray.algos import ADVANTAGE_ESTIMATORS, masked_var, masked_whiten
from rlhf_ray.config import Config

GROUP_ALGORITHMS = ("grpo", "rloo")


def estimate_advantages(cfg: Config, scores: Tensor, token_rewards: Tensor, seq_kl: Tensor, mask: Tensor,
                        beta: float, values: Tensor | None = None) -> tuple[Tensor, Tensor]:
    """(advantages, returns) [B, T] for ``cfg.algorithm``.

    ``token_rewards`` already hold −β·KL per token when ``ppo.kl.placement=reward``. GRPO and RLOO
    read sequence scores instead, so there the same penalty is applied per sequence, s − β·ΣKL (the
    RLOO paper's reward); with ``placement=loss`` the learner adds it to the loss instead."""
    ppo, algo = cfg.ppo, cfg.algorithm
    if algo == "ppo" and values is None:
        raise ValueError("algorithm=ppo needs the critic's values")
    seq_scores = scores - beta * seq_kl if ppo.kl.placement == "reward" else scores
    adv, returns = ADVANTAGE_ESTIMATORS.get("gae" if algo == "ppo" else algo)(
        token_rewards=token_rewards, values=values, scores=seq_scores, mask=mask, gamma=ppo.gamma, lam=ppo.lam,
        group_size=ppo.samples_per_prompt, normalize_std=ppo.whiten_advantages)
    if not ppo.whiten_advantages:
        # REINFORCE++'s estimator always whitens; without it the advantage is the plain return.
        return (returns if algo == "reinforce_pp" else adv), returns
    if algo == "ppo":
        adv = masked_whiten(adv, mask)
    elif algo == "rloo":
        adv = adv * torch.rsqrt(masked_var(adv, mask) + 1e-8)
    return adv, returns


def penalize_and_estimate(cfg: Config, batch: dict[str, Tensor], scores: Tensor, beta: float) -> tuple[Tensor, Tensor]:
    """KL-penalised token rewards (β·KL leaves the reward when ppo.kl.placement=reward), then
    advantages and returns into ``batch``. Returns the per-token KL and its sum per sequence."""
    from rlhf_ray.algos import kl_penalized_rewards

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
