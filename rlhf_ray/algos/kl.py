"""Per-token KL estimators, KL-penalised token rewards and KL coefficient controllers.

Estimators follow Schulman, "Approximating KL Divergence" (2020): with tokens
sampled from the policy and r = log pi(x) - log pi_ref(x), each returns a
per-token estimate of KL(pi || pi_ref).
"""
from __future__ import annotations

from typing import Any, Dict, Tuple

import torch
from torch import Tensor

from .registry import KL_ESTIMATORS

# exp(20) ~ 4.9e8 is still finite in fp16/bf16/fp32; without a clamp one badly
# off-policy token turns exp(-r) into inf and poisons the whole batch mean.
LOG_RATIO_CLAMP = 20.0


@KL_ESTIMATORS.register("k1")
def kl_k1(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k1 = r. Unbiased, high variance, can be negative per token."""
    return logp - ref_logp


@KL_ESTIMATORS.register("k2")
def kl_k2(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k2 = r^2 / 2. Biased but low variance, nonnegative."""
    return 0.5 * (logp - ref_logp) ** 2


@KL_ESTIMATORS.register("k3")
def kl_k3(logp: Tensor, ref_logp: Tensor) -> Tensor:
    """k3 = exp(-r) - 1 + r. Unbiased and nonnegative (since e^x >= 1 + x).

    r is clamped to +-LOG_RATIO_CLAMP before the exp.
    """
    r = (logp - ref_logp).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    return torch.exp(-r) - 1.0 + r


def kl_penalized_rewards(
    scores: Tensor,
    logp: Tensor,
    ref_logp: Tensor,
    mask: Tensor,
    beta: float,
    estimator: str = "k1",
) -> Tuple[Tensor, Tensor]:
    """Token rewards r_t = -beta * kl_t + [t == last valid token] * score.

    Returns ``(token_rewards [B, T], kl [B, T])``, both zero at padding and
    detached: rewards are constants for the policy gradient. The sequence score
    goes on the last valid token: the index of the last nonzero mask entry, the
    policy's last token. Only for the prefix masks from ``mask_from_lengths`` is
    that ``mask.sum(-1) - 1``; a multi-turn mask has holes (observation tokens)
    and may end before the row's length. Rows with an empty mask receive no score.
    """
    with torch.no_grad():
        valid = mask != 0
        kl = KL_ESTIMATORS.get(estimator)(logp.detach(), ref_logp.detach())
        kl = torch.where(valid, kl, torch.zeros_like(kl))
        rewards = -beta * kl
        T = mask.shape[-1]
        pos = torch.arange(T, device=mask.device).expand_as(mask)
        last = torch.where(valid, pos, torch.full_like(pos, -1)).max(dim=-1).values
        has_tokens = last >= 0
        rows = torch.arange(mask.shape[0], device=mask.device)
        add = torch.where(has_tokens, scores.to(rewards.dtype), torch.zeros_like(rewards[:, 0]))
        rewards[rows, last.clamp(min=0)] += add
    return rewards, kl


class FixedKLController:
    """Constant KL coefficient beta."""

    def __init__(self, beta: float):
        self.value = float(beta)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: beta stays fixed."""

    def state_dict(self) -> Dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.value = float(state["value"])


class AdaptiveKLController:
    """Adaptive KL coefficient of Ziegler et al. 2019, "Fine-Tuning LMs from Human Preferences".

    e = clip(KL / target - 1, -0.2, 0.2);  beta <- beta * (1 + e * n_steps / horizon)

    Only ``value`` is checkpointed: target and horizon are configuration, so a
    resumed run may change them without the old ones silently winning.
    """

    def __init__(self, init_beta: float, target: float, horizon: float):
        if target <= 0 or horizon <= 0:
            raise ValueError(f"target and horizon must be > 0, got {target}, {horizon}")
        self.value = float(init_beta)
        self.target = float(target)
        self.horizon = float(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = min(max(float(current_kl) / self.target - 1.0, -0.2), 0.2)
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> Dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, state: Dict[str, Any]) -> None:
        self.value = float(state["value"])
