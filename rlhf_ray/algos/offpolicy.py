"""Correcting for samples drawn by a policy other than the one PPO treats as π_old.

In the asynchronous mode the rollout engines generate step n+1 while the learner trains step n,
so a batch is sampled by weights one update older than the learner's (the behaviour policy μ).
PPO's ratio is taken against π_old (the learner's own log-probs before the update); the gap
between π_old and μ is corrected per token by an importance weight, truncated at C so that a
token μ found unlikely cannot blow up the gradient (truncated IS, as in Espeholt et al. 2018's
V-trace and Yao et al. 2025 for rollout/trainer mismatch)."""

from __future__ import annotations

import torch
from torch import Tensor

from .masked import masked_mean

LOG_WEIGHT_CLAMP = 20.0  # exp overflow guard; anything beyond is capped at C anyway


def truncated_is_weights(old_logp: Tensor, behaviour_logp: Tensor, cap: float) -> Tensor:
    """w_t = min(π_old(a_t|s_t) / μ(a_t|s_t), C), detached: a weight, not a path for the gradient."""
    log_w = (old_logp - behaviour_logp).detach().clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP)
    return torch.exp(log_w).clamp(max=cap)


def is_weight_metrics(old_logp: Tensor, behaviour_logp: Tensor, cap: float, mask: Tensor) -> dict[str, float]:
    """Mean weight and the share of tokens the cap truncated."""
    raw = torch.exp((old_logp - behaviour_logp).clamp(-LOG_WEIGHT_CLAMP, LOG_WEIGHT_CLAMP))
    return {"is_weight_mean": masked_mean(raw.clamp(max=cap), mask).item(),
            "is_capped_frac": masked_mean((raw > cap).float(), mask).item()}
