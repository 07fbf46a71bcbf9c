"""Policy, value, SFT, reward-model and preference losses.

Per-token losses take [B, T] tensors plus a response mask; preference losses
take SUMMED sequence log-probs [B]. Metrics are plain python floats.
"""
from __future__ import annotations

import math
from typing import Dict, Optional, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor

from .aggregate import Normalizer, aggregate_loss, mean_over_units
from .kl import LOG_RATIO_CLAMP
from .masked import masked_mean, select_valid
from .registry import POLICY_LOSSES, PREFERENCE_LOSSES, VALUE_LOSSES

Metrics = Dict[str, float]


@POLICY_LOSSES.register("ppo")
def ppo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: Optional[float] = None,
    agg: str = "token-mean",
    is_weights: Optional[Tensor] = None,
    norm: Optional[Normalizer] = None,
) -> Tuple[Tensor, Metrics]:
    """PPO clipped surrogate (Schulman et al. 2017), rho = exp(logp - old_logp):

    l_t = -w_t min(rho A, clip(rho, 1 - eps, 1 + eps_high) A),  eps_high defaults to eps
    (a larger eps_high is DAPO's "clip-higher"); w_t = 1, or the (detached) truncated importance
    weight π_old/π_behaviour when the samples came from another policy (see truncated_is_weights).
    Every policy loss aggregates with ``agg`` over the step that ``norm`` counts (rlhf_ray.algos.aggregate),
    and first zeroes its inputs at masked positions (select_valid), so that NaN or ±inf there (log-probs
    past EOS, advantages of padding) leave the loss and every gradient finite, and 0 at padding.
    """
    logp, old_logp, advantages, is_weights = select_valid(mask, logp, old_logp, advantages, is_weights)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    # Same overflow guard as the KL estimators; beyond it the token is clipped anyway.
    ratio = torch.exp(log_ratio.clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    loss_tok, clipped = _clipped_surrogate(ratio, advantages, clip_eps, eps_high)
    metrics = _ratio_metrics(log_ratio, ratio, clipped, mask)
    return _weighted_loss(loss_tok, mask, agg, is_weights, norm), metrics


def _clipped_surrogate(ratio: Tensor, advantages: Tensor, clip_eps: float, eps_high: float) -> Tuple[Tensor, Tensor]:
    """-min(rho A, clip(rho, 1 - eps, 1 + eps_high) A) per token, and where the clipped term won."""
    surr = ratio * advantages
    surr_clipped = ratio.clamp(1.0 - clip_eps, 1.0 + eps_high) * advantages
    return -torch.minimum(surr, surr_clipped), surr_clipped < surr


def _weighted_loss(loss_tok: Tensor, mask: Tensor, agg: str, is_weights: Optional[Tensor],
                   norm: Optional[Normalizer]) -> Tensor:
    if is_weights is not None:
        loss_tok = loss_tok * is_weights.detach()
    return aggregate_loss(loss_tok, mask, agg, norm)


@torch.no_grad()
def _ratio_metrics(log_ratio: Tensor, ratio: Tensor, clipped: Tensor, mask: Tensor) -> Metrics:
    return {
        "clipfrac": masked_mean(clipped.float(), mask).item(),
        "approx_kl": masked_mean(0.5 * log_ratio.detach() ** 2, mask).item(),
        "ratio_mean": masked_mean(ratio.detach(), mask).item(),
    }


@POLICY_LOSSES.register("gspo")
def gspo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    clip_eps_high: Optional[float] = None,
    agg: str = "seq-mean-token-mean",
    is_weights: Optional[Tensor] = None,
    norm: Optional[Normalizer] = None,
) -> Tuple[Tensor, Metrics]:
    """GSPO (Zheng et al. 2025, "Group Sequence Policy Optimization"): one importance ratio per
    sequence, length-normalised, clipped per sequence:

    s_i = (π(y_i|x) / π_old(y_i|x))^(1/|y_i|) = exp(mean_t (logp - old_logp)), t over the mask's tokens
    J   = mean_i min(s_i A_i, clip(s_i, 1 - eps, 1 + eps_high) A_i)

    Computed in the paper's GSPO-token form, s_i,t = sg[s_i] · π(y_t)/sg[π(y_t)], whose value is
    s_i on every token and whose gradient with a per-sequence advantage and the seq-mean-token-mean
    aggregation equals GSPO's (the config refuses algorithm=gspo with another ppo.loss_agg). The paper's
    clip range is tiny (3e-4 / 4e-4, the gspo row's defaults in rlhf_ray/algorithms.py): a sequence
    ratio is a geometric mean. A clipped sequence contributes no gradient at all.
    """
    logp, old_logp, advantages, is_weights = select_valid(mask, logp, old_logp, advantages, is_weights)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    seq_log_ratio = masked_mean(log_ratio, mask, dim=-1).clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP)
    # value s_i on every token, gradient s_i · ∇logp_t
    ratio = torch.exp(seq_log_ratio.detach().unsqueeze(-1) + logp - logp.detach())
    loss_tok, clipped = _clipped_surrogate(ratio, advantages, clip_eps, eps_high)
    metrics = _ratio_metrics(log_ratio, ratio, clipped, mask)
    metrics["seq_ratio_mean"] = masked_mean(ratio.detach(), mask).item()
    return _weighted_loss(loss_tok, mask, agg, is_weights, norm), metrics


@POLICY_LOSSES.register("cispo")
def cispo_policy_loss(
    logp: Tensor,
    old_logp: Tensor,
    advantages: Tensor,
    mask: Tensor,
    clip_eps: float,
    clip_eps_high: Optional[float] = None,
    agg: str = "token-mean",
    is_weights: Optional[Tensor] = None,
    norm: Optional[Normalizer] = None,
) -> Tuple[Tensor, Metrics]:
    """CISPO (MiniMax-M1, MiniMax 2025): REINFORCE on every token, weighted by a clipped,
    stop-gradient importance ratio:

    l_t = -sg(clip(rho_t, 1 - eps, 1 + eps_high)) · A_t · logp_t,   rho_t = exp(logp_t - old_logp_t)

    Unlike PPO's clip, which drops a token's gradient once its ratio leaves the range, CISPO keeps
    every token's gradient and only bounds its weight (the paper aggregates by token-mean over the batch).
    MiniMax-M1 leaves the lower side open: the cispo row (rlhf_ray/algorithms.py) sets eps = 1.0 for
    that, a weight in [0, 1 + eps_high].
    """
    logp, old_logp, advantages, is_weights = select_valid(mask, logp, old_logp, advantages, is_weights)
    eps_high = clip_eps if clip_eps_high is None else clip_eps_high
    log_ratio = logp - old_logp
    ratio = torch.exp(log_ratio.detach().clamp(-LOG_RATIO_CLAMP, LOG_RATIO_CLAMP))
    weight = ratio.clamp(1.0 - clip_eps, 1.0 + eps_high)
    loss_tok = -weight * advantages * logp
    clipped = (ratio < 1.0 - clip_eps) | (ratio > 1.0 + eps_high)
    return _weighted_loss(loss_tok, mask, agg, is_weights, norm), _ratio_metrics(log_ratio, ratio, clipped, mask)


@VALUE_LOSSES.register("clipped")
def clipped_value_loss(
    values: Tensor,
    old_values: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_eps: float = 0.2,
    agg: str = "token-mean",
    norm: Optional[Normalizer] = None,
) -> Tuple[Tensor, Metrics]:
    """l_t = 0.5 * max((v - R)^2, (v_old + clip(v - v_old, -eps, eps) - R)^2)."""
    values, old_values, returns = select_valid(mask, values, old_values, returns)  # see select_valid
    v_clipped = old_values + (values - old_values).clamp(-clip_eps, clip_eps)
    l_raw = (values - returns) ** 2
    l_clip = (v_clipped - returns) ** 2
    loss = 0.5 * aggregate_loss(torch.maximum(l_raw, l_clip), mask, agg, norm)
    with torch.no_grad():
        metrics = {
            "vf_clipfrac": masked_mean((l_clip > l_raw).float(), mask).item(),
            "value_mean": masked_mean(values, mask).item(),
        }
    return loss, metrics


def sft_loss(logp: Tensor, mask: Tensor, norm: Optional[Normalizer] = None) -> Tensor:
    """Negative mean log-likelihood over response tokens: -sum(logp m) / sum(m), the sum over the step."""
    return aggregate_loss(-logp, mask, "token-mean", norm)


def bradley_terry_loss(
    chosen_scores: Tensor, rejected_scores: Tensor, margin: Union[Tensor, float, None] = None,
    norm: Optional[Normalizer] = None,
) -> Tuple[Tensor, Metrics]:
    """Reward-model loss: mean_b -log sigma(r_w - r_l - margin) (margin as in Llama 2), the mean over the step."""
    diff = chosen_scores - rejected_scores
    loss = mean_over_units(-F.logsigmoid(diff - (0.0 if margin is None else margin)), norm)
    with torch.no_grad():
        metrics = {"accuracy": (diff > 0).float().mean().item(), "margin": diff.mean().item()}
    return loss, metrics


def preference_metrics(chosen_rewards: Tensor, rejected_rewards: Tensor) -> Metrics:
    """Batch means of the implicit rewards, their margin and how often chosen wins."""
    c, r = chosen_rewards.detach().float(), rejected_rewards.detach().float()
    return {
        "reward_chosen": c.mean().item(),
        "reward_rejected": r.mean().item(),
        "margin": (c - r).mean().item(),
        "accuracy": (c > r).float().mean().item(),
    }


# ---- Preference losses: fn(policy_chosen_logps, policy_rejected_logps, ref_chosen_logps,
# ref_rejected_logps, beta, **kw) -> (losses [B], chosen_rewards [B], rejected_rewards [B]).
# Unused kwargs are ignored so the trainer can pass one bundle to any registered loss.
# Implicit rewards are detached: they are for logging, not for the gradient.


def _require(name: str, **tensors: Optional[Tensor]) -> None:
    missing = [k for k, v in tensors.items() if v is None]
    if missing:
        raise ValueError(f"{name} loss needs {', '.join(missing)}")


@PREFERENCE_LOSSES.register("cdpo")  # conservative DPO: DPO whose label_smoothing must be > 0
@PREFERENCE_LOSSES.register("dpo")
def dpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor],
    ref_rejected_logps: Optional[Tensor],
    beta: float,
    label_smoothing: float = 0.0,
    **_unused,
) -> Tuple[Tensor, Tensor, Tensor]:
    """DPO (Rafailov et al. 2023). With h = (pi_w - ref_w) - (pi_l - ref_l):

    l = -(1 - e) log sigma(beta h) - e log sigma(-beta h)
    e = label_smoothing > 0 is conservative DPO (labels flipped with prob. e).
    rewards: beta * (pi - ref).
    """
    _require("dpo", ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    lc = policy_chosen_logps - ref_chosen_logps
    lr = policy_rejected_logps - ref_rejected_logps
    z = beta * (lc - lr)
    losses = -(1.0 - label_smoothing) * F.logsigmoid(z) - label_smoothing * F.logsigmoid(-z)
    return losses, beta * lc.detach(), beta * lr.detach()


@PREFERENCE_LOSSES.register("ipo")
def ipo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor],
    ref_rejected_logps: Optional[Tensor],
    beta: float,
    **_unused,
) -> Tuple[Tensor, Tensor, Tensor]:
    """IPO (Azar et al. 2023): l = (h - 1 / (2 beta))^2, h as in DPO.

    Uses the log-probs exactly as passed (summed). For the paper's
    length-averaged variant pass per-token averages (and retune beta: h then
    shrinks by the response length).
    """
    _require("ipo", ref_chosen_logps=ref_chosen_logps, ref_rejected_logps=ref_rejected_logps)
    lc = policy_chosen_logps - ref_chosen_logps
    lr = policy_rejected_logps - ref_rejected_logps
    losses = (lc - lr - 1.0 / (2.0 * beta)) ** 2
    return losses, beta * lc.detach(), beta * lr.detach()


@PREFERENCE_LOSSES.register("simpo")
def simpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor] = None,
    ref_rejected_logps: Optional[Tensor] = None,
    beta: float = 2.0,
    gamma: float = 0.5,
    chosen_lengths: Optional[Tensor] = None,
    rejected_lengths: Optional[Tensor] = None,
    **_unused,
) -> Tuple[Tensor, Tensor, Tensor]:
    """SimPO (Meng et al. 2024), reference-free (ref logps ignored):

    l = -log sigma(beta/|y_w| log pi(y_w) - beta/|y_l| log pi(y_l) - gamma)
    rewards: beta * log pi(y) / |y|.
    """
    _require("simpo", chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    rw = beta * policy_chosen_logps / chosen_lengths.clamp(min=1)
    rl = beta * policy_rejected_logps / rejected_lengths.clamp(min=1)
    return -F.logsigmoid(rw - rl - gamma), rw.detach(), rl.detach()


def _log1mexp(x: Tensor) -> Tensor:
    """log(1 - exp(x)) for x < 0 (Maechler 2012).

    log(-expm1(x)) is accurate near 0, log1p(-exp(x)) far from it. Each branch
    gets inputs safe for it, because torch.where still backpropagates through
    the unused branch and an inf there turns the gradient into NaN.
    """
    # An average log-prob of 0 means infinite odds; cap it so loss and grad stay finite.
    x = x.clamp(max=-1e-6)
    split = torch.full_like(x, -math.log(2.0))
    near = x > split
    a = torch.log(-torch.expm1(torch.where(near, x, split)))
    b = torch.log1p(-torch.exp(torch.where(near, split, x)))
    return torch.where(near, a, b)


@PREFERENCE_LOSSES.register("orpo")
def orpo_loss(
    policy_chosen_logps: Tensor,
    policy_rejected_logps: Tensor,
    ref_chosen_logps: Optional[Tensor] = None,
    ref_rejected_logps: Optional[Tensor] = None,
    beta: float = 0.1,
    lam: float = 0.1,
    chosen_lengths: Optional[Tensor] = None,
    rejected_lengths: Optional[Tensor] = None,
    **_unused,
) -> Tuple[Tensor, Tensor, Tensor]:
    """ORPO (Hong et al. 2024), reference-free (ref logps ignored). With a = log pi(y) / |y|:

    log odds(y) = a - log(1 - exp(a))
    l = -a_w + lam * -log sigma(log odds(y_w) - log odds(y_l))

    The SFT term is the length-normalised NLL of the chosen response, so the
    summed log-prob and chosen_lengths are all it needs. beta only scales the
    reported rewards beta * a (as in TRL); lam weights the odds-ratio term.
    """
    _require("orpo", chosen_lengths=chosen_lengths, rejected_lengths=rejected_lengths)
    ac = (policy_chosen_logps / chosen_lengths.clamp(min=1)).float()
    ar = (policy_rejected_logps / rejected_lengths.clamp(min=1)).float()
    log_odds = (ac - _log1mexp(ac)) - (ar - _log1mexp(ar))
    losses = -ac - lam * F.logsigmoid(log_odds)
    return losses, beta * ac.detach(), beta * ar.detach()


def kto_reference_point(policy_logps_mismatched: Tensor, ref_logps_mismatched: Tensor) -> float:
    """z0 = max(0, mean(log pi(y'|x) - log pi_ref(y'|x))) over mismatched (x, y') pairs.

    Detached: KTO treats z0 as a constant baseline. In data-parallel training
    average the per-rank means before clamping.
    """
    with torch.no_grad():
        z0 = (policy_logps_mismatched - ref_logps_mismatched).float().mean()
    return max(z0.item(), 0.0)


def kto_loss(policy_logps: Tensor, ref_logps: Tensor, labels: Tensor, beta: float, kl_ref_point: float,
             desirable_weight: float = 1.0, undesirable_weight: float = 1.0) -> Tuple[Tensor, Tensor]:
    """KTO (Ethayarajh et al. 2024), with r = log pi - log pi_ref and z0 = max(kl_ref_point, 0):

    desirable (label True):    w_d * (1 - sigma(beta (r - z0)))
    undesirable (label False): w_u * (1 - sigma(beta (z0 - r)))

    Returns ``(losses [B], rewards [B] = beta * r detached)``.
    """
    z0 = max(float(kl_ref_point), 0.0)
    r = policy_logps - ref_logps
    desirable = labels.bool()
    loss_d = desirable_weight * (1.0 - torch.sigmoid(beta * (r - z0)))
    loss_u = undesirable_weight * (1.0 - torch.sigmoid(beta * (z0 - r)))
    return torch.where(desirable, loss_d, loss_u), beta * r.detach()
