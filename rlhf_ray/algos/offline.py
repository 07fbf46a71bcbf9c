"""Offline objectives over batches of summed sequence log-probs, shared by training and evaluation.

The learner calls these with gradients on its micro-batches; the controller calls them without, on
the log-probs of the whole held-out set, so training and evaluation metrics mean the same thing.
Rows come in units of two adjacent rows: (chosen, rejected) for pairs, (completion, mismatched
completion) for KTO; see rlhf_ray.data.preference.
"""

from __future__ import annotations

from typing import Protocol

import torch
from torch import Tensor

from .aggregate import Normalizer, mean_over_units
from .losses import kto_loss, preference_metrics
from .registry import PREFERENCE_LOSSES


class OfflineSettings(Protocol):
    """The hyper-parameters these objectives read: the config's ``offline`` section
    (rlhf_ray.config.OfflineConfig) fits, and the maths stays importable without the config layer."""
    beta: float
    label_smoothing: float
    simpo_gamma: float
    orpo_lambda: float
    kto_desirable_weight: float
    kto_undesirable_weight: float


def preference_objective(objective: str, oc: OfflineSettings, logps: Tensor, lengths: Tensor,
                         ref_logps: Tensor | None = None,
                         norm: Normalizer | None = None) -> tuple[Tensor, dict[str, float]]:
    """Mean preference loss of adjacent (chosen, rejected) rows over the step ``norm`` counts (in
    pairs), and its metrics (means over this batch).

    ``objective`` is a PREFERENCE_LOSSES entry; cdpo is dpo with label smoothing ε. The implicit
    rewards are the loss's own: β·log π/π_ref for dpo/ipo/cdpo, and the length-normalised log-prob
    (times β) for the reference-free simpo/orpo."""
    fn = PREFERENCE_LOSSES.get(objective)
    ref_c = ref_r = None
    if ref_logps is not None:
        ref_c, ref_r = ref_logps[0::2].to(logps), ref_logps[1::2].to(logps)
    lengths = lengths.to(logps)
    losses, rc, rr = fn(logps[0::2], logps[1::2], ref_c, ref_r, beta=oc.beta, label_smoothing=oc.label_smoothing,
                        gamma=oc.simpo_gamma, lam=oc.orpo_lambda, chosen_lengths=lengths[0::2],
                        rejected_lengths=lengths[1::2])
    loss = mean_over_units(losses, norm)
    c, r = logps[0::2].detach(), logps[1::2].detach()
    metrics = {"loss": losses.mean().item(), **preference_metrics(rc, rr), "logps_chosen": c.mean().item(),
               "logps_rejected": r.mean().item(),
               # Reference-free and meaningful before training (when every DPO implicit reward is 0):
               # does the policy give the chosen response the higher mean log-prob per token?
               "logp_accuracy": (c / lengths[0::2].clamp(min=1) > r / lengths[1::2].clamp(min=1)).float().mean().item()}
    return loss, metrics


def kto_reference_point_distributed(policy_mismatched: Tensor, ref_mismatched: Tensor) -> float:
    """z0 = max(0, mean KL estimate over the mismatched rows of every rank): averaged before the
    clamp, as the KTO paper specifies, so all ranks use the same baseline."""
    total = torch.stack([(policy_mismatched - ref_mismatched.to(policy_mismatched)).float().sum(),
                         torch.tensor(float(len(policy_mismatched)))])
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.all_reduce(total)
    return max((total[0] / total[1].clamp(min=1)).item(), 0.0)


def kto_objective(oc: OfflineSettings, logps: Tensor, ref_logps: Tensor, labels: Tensor,
                  z0: float, norm: Normalizer | None = None) -> tuple[Tensor, dict[str, float]]:
    """Mean KTO loss of completions (one row each: ``logps``, ``ref_logps``, ``labels`` [N]) over the
    step ``norm`` counts.

    reward_chosen / reward_rejected are the mean implicit rewards β·log π/π_ref of the desirable and
    undesirable examples; accuracy is the share on the right side of z0."""
    labels = labels.bool()
    losses, rewards = kto_loss(logps, ref_logps.to(logps), labels, oc.beta, z0,
                               desirable_weight=oc.kto_desirable_weight, undesirable_weight=oc.kto_undesirable_weight)
    loss = mean_over_units(losses, norm)
    z = oc.beta * z0
    good, bad = rewards[labels], rewards[~labels]
    mean = lambda t: t.mean().item() if len(t) else 0.0  # noqa: E731 - a batch may hold one label only
    metrics = {"loss": losses.mean().item(), "kl": z0, "reward_chosen": mean(good), "reward_rejected": mean(bad),
               "margin": mean(good) - mean(bad),
               "accuracy": (torch.where(labels, rewards > z, rewards < z)).float().mean().item(),
               "desirable_frac": labels.float().mean().item()}
    return loss, metrics


def pairwise_accuracy(rewards: Tensor, labels: Tensor, pair_ids: list[int | None]) -> float | None:
    """Share of pairs whose desirable example out-scores its undesirable twin (KTO data made from
    pairs); None when no complete pair is present."""
    by_pair: dict[int, dict[bool, float]] = {}
    for r, lab, pid in zip(rewards.tolist(), labels.bool().tolist(), pair_ids):
        if pid is not None:
            by_pair.setdefault(pid, {})[lab] = r
    wins = [p[True] > p[False] for p in by_pair.values() if len(p) == 2]
    return sum(wins) / len(wins) if wins else None
