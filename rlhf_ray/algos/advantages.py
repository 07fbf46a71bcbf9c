"""Advantage estimators, registered in ADVANTAGE_ESTIMATORS.

All take keyword arguments and ignore the ones they do not use, so the
controller can pass one bundle to whichever estimator the config names:

    adv, ret = ADVANTAGE_ESTIMATORS.get(name)(
        token_rewards=..., values=..., scores=..., mask=..., gamma=..., lam=..., group_size=...)

    gae           token_rewards, values, mask, gamma, lam, normalize_std
    grpo          scores, group_size, mask, eps, normalize_std
    dr_grpo       scores, group_size, mask
    rloo          scores, group_size, mask, normalize_std
    reinforce_pp  token_rewards, mask, gamma, normalize_std

Each returns ``(advantages [B, T], returns [B, T])``, detached and zero where
the mask is 0. The mask marks the policy's own tokens: a prefix mask
(``mask_from_lengths``) for one-turn responses, or one with holes for multi-turn
ones, whose observation tokens (tool output the policy did not generate) sit
between its turns. Masked positions are transparent to the temporal estimators:
GAE and REINFORCE++ run over each row's subsequence of policy tokens (one
discount step per policy token, the next value is the next policy token's), so
a hole neither ends the episode nor costs a discount. Group estimators expect
the n samples of one prompt in consecutive rows.

``normalize_std`` (the config's ``ppo.whiten_advantages``) is each method's own
normalisation: GAE whitens over the batch's tokens, GRPO divides by the group's
std, RLOO by the batch's (never re-centring: its advantages are already zero-mean
per group, and re-centring would give a group with no signal a non-zero
advantage), REINFORCE++ whitens its returns. Dr. GRPO never normalises.
"""
from __future__ import annotations

from typing import Tuple

import torch
from torch import Tensor

from .masked import masked_var, masked_whiten
from .registry import ADVANTAGE_ESTIMATORS


def _grouped(scores: Tensor, group_size: int) -> Tensor:
    B = scores.shape[0]
    if group_size < 1 or B % group_size != 0:
        raise ValueError(
            f"batch size {B} is not divisible by group_size {group_size}; "
            "group estimators need all n samples of every prompt in the batch"
        )
    return scores.reshape(B // group_size, group_size)


def _broadcast(per_row: Tensor, mask: Tensor) -> Tensor:
    m = mask.to(torch.promote_types(per_row.dtype, torch.float32))
    return per_row.unsqueeze(-1).to(m.dtype) * m


def _discounted_cumsum(x: Tensor, gamma: float, mask: Tensor) -> Tensor:
    """G_t = x_t + gamma * G_t' over the positions where ``mask`` is set, t' the next such position;
    0 elsewhere. Masked positions are skipped: they neither add nor discount."""
    # Reverse loop over T, vectorised over B; T is at most a few thousand.
    valid = mask != 0
    zero = torch.zeros((), dtype=x.dtype)
    out = torch.zeros_like(x)
    running = torch.zeros_like(x[:, 0])
    for t in reversed(range(x.shape[1])):
        running = torch.where(valid[:, t], x[:, t] + gamma * running, running)
        out[:, t] = torch.where(valid[:, t], running, zero)
    return out


@ADVANTAGE_ESTIMATORS.register("gae")
@torch.no_grad()
def gae(
    token_rewards: Tensor,
    values: Tensor,
    mask: Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
    normalize_std: bool = False,
    **_unused,
) -> Tuple[Tensor, Tensor]:
    """Generalised Advantage Estimation (Schulman et al. 2016), over each row's valid tokens.

    With t' the next valid token after t (masked positions are skipped, not stepped through):
    delta_t = r_t + gamma * V_{t'} - V_t, with V_{t'} = 0 after the last valid token
    A_t = delta_t + gamma * lam * A_{t'};   returns R_t = A_t + V_t;   A = R = 0 where masked
    ``normalize_std``: A whitened over the batch's valid tokens (returns unchanged).
    """
    dtype = torch.promote_types(values.dtype, torch.float32)
    m = mask.to(dtype)
    valid = mask != 0
    # Selected, not multiplied: a NaN or inf at padding (a value head's garbage past the end) times
    # 0 is still NaN and would spread.
    zero = torch.zeros((), dtype=dtype)
    v = torch.where(valid, values.to(dtype), zero)
    r = torch.where(valid, token_rewards.to(dtype), zero)
    T = v.shape[1]
    adv = torch.zeros_like(v)
    running = torch.zeros_like(v[:, 0])
    # V of the next valid token: 0 until one is seen, since the episode ends after the last one.
    # A masked position (an observation between turns) leaves it and the running A untouched, so
    # the turns chain as one episode over the policy's tokens.
    next_v = torch.zeros_like(running)
    for t in reversed(range(T)):
        delta = r[:, t] + gamma * next_v - v[:, t]
        running = torch.where(valid[:, t], delta + gamma * lam * running, running)
        next_v = torch.where(valid[:, t], v[:, t], next_v)
        adv[:, t] = torch.where(valid[:, t], running, zero)
    returns = (adv + v) * m
    return (masked_whiten(adv, mask) if normalize_std else adv), returns


@ADVANTAGE_ESTIMATORS.register("grpo")
@torch.no_grad()
def grpo(
    scores: Tensor,
    group_size: int,
    mask: Tensor,
    eps: float = 1e-6,
    normalize_std: bool = True,
    **_unused,
) -> Tuple[Tensor, Tensor]:
    """GRPO (Shao et al. 2024), outcome supervision.

    A_i = (s_i - mean_g(s)) / (std_g(s) + eps) for every valid token of row i,
    with mean/std over the i's group (std unbiased; 0 for a group of one).
    ``normalize_std=False`` drops the division (Dr. GRPO). returns = advantages.
    """
    g = _grouped(scores.float(), group_size)
    adv = g - g.mean(dim=1, keepdim=True)
    if normalize_std:
        std = g.std(dim=1, keepdim=True) if group_size > 1 else torch.zeros_like(g)
        adv = adv / (std + eps)
    adv = _broadcast(adv.reshape(-1), mask)
    return adv, adv.clone()


@ADVANTAGE_ESTIMATORS.register("dr_grpo")
@torch.no_grad()
def dr_grpo(scores: Tensor, group_size: int, mask: Tensor, **_unused) -> Tuple[Tensor, Tensor]:
    """Dr. GRPO (Liu et al. 2025, "Understanding R1-Zero-Like Training"): A_i = s_i - mean_g(s),
    with no division by the group's std, which up-weights prompts that are almost always right or
    wrong (its length normalisation is the seq-mean-token-sum-norm aggregation). returns = advantages.
    """
    return grpo(scores, group_size, mask, normalize_std=False)


@ADVANTAGE_ESTIMATORS.register("rloo")
@torch.no_grad()
def rloo(
    scores: Tensor, group_size: int, mask: Tensor, normalize_std: bool = False, **_unused
) -> Tuple[Tensor, Tensor]:
    """REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024).

    A_i = s_i - (sum_g(s) - s_i) / (n - 1), broadcast over row i's valid tokens.
    ``normalize_std``: A / std over the batch's valid tokens, not re-centred. returns = advantages.
    """
    if group_size < 2:
        raise ValueError(f"rloo needs group_size >= 2 for a leave-one-out baseline, got {group_size}")
    g = _grouped(scores.float(), group_size)
    baseline = (g.sum(dim=1, keepdim=True) - g) / (group_size - 1)
    adv = _broadcast((g - baseline).reshape(-1), mask)
    if normalize_std:
        adv = adv * torch.rsqrt(masked_var(adv, mask) + 1e-8)
    return adv, adv.clone()


@ADVANTAGE_ESTIMATORS.register("reinforce_pp")
@torch.no_grad()
def reinforce_pp(
    token_rewards: Tensor, mask: Tensor, gamma: float = 1.0, normalize_std: bool = True, **_unused
) -> Tuple[Tensor, Tensor]:
    """REINFORCE++ (Hu 2025).

    G_t = sum_{k >= t valid} gamma^(n(t, k)) r_k, n(t, k) the number of valid tokens after t up to
    and including k (r are the KL-penalised token rewards; masked positions count no discount and
    get G = 0); A = masked_whiten(G) over the whole batch
    (``normalize_std=False``: A = G, plain REINFORCE). Returns ``(A, G)``.
    """
    m = mask.to(torch.promote_types(token_rewards.dtype, torch.float32))
    r = torch.where(mask != 0, token_rewards.to(m.dtype), torch.zeros((), dtype=m.dtype))
    returns = _discounted_cumsum(r, gamma, mask)
    return (masked_whiten(returns, mask) if normalize_std else returns), returns
