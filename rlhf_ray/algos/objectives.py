"""The objectives the trainable roles minimise on each micro-batch of an online update: the policy's
(a registered policy loss, the entropy bonus, and the KL penalty when it sits in the loss) and the
critic's value loss. Roles run the forward passes and hand the outputs here; they hold no maths.

Every term aggregates over the whole optimiser step that ``norm`` counts (rlhf_ray.algos.aggregate),
so the accumulated gradient is the gradient of the documented mean, whatever the micro-batching.
"""

from __future__ import annotations

from typing import Protocol

from torch import Tensor

from .aggregate import Normalizer, aggregate_loss
from .masked import select_valid
from .offpolicy import is_weight_metrics, truncated_is_weights
from .registry import KL_ESTIMATORS, POLICY_LOSSES, VALUE_LOSSES


class KLSettings(Protocol):
    estimator: str
    placement: str


class PPOSettings(Protocol):
    """The hyper-parameters these objectives read: the config's ``ppo`` section (rlhf_ray.config.PPOConfig)
    fits, and the maths stays importable without the config layer above it."""
    clip_eps: float
    clip_eps_high: float | None
    entropy_coef: float
    tis_cap: float | None
    value_clip_eps: float
    value_loss_coef: float
    kl: KLSettings


def policy_objective(ppo: PPOSettings, loss_name: str, agg: str, logp: Tensor, entropy: Tensor, mb: dict[str, Tensor],
                     kl_coef: float, norm: Normalizer | None = None) -> tuple[Tensor, dict[str, float]]:
    """L = policy_loss(ρ, A; agg) − c_H · agg(H) + [ppo.kl.placement = loss] β · agg(KL(π‖π_ref)).

    ``loss_name`` is a POLICY_LOSSES entry (ppo, gspo, cispo). When the rollout's own log-probs came
    with the batch, each token's loss is weighted by min(π_old/π_rollout, ppo.tis_cap) (the engine's
    policy may lag π_old: asynchronous rollout, or numerical mismatch)."""
    mask = mb["response_mask"]
    weights = None
    if ppo.tis_cap is not None and "rollout_logprobs" in mb:
        weights = truncated_is_weights(mb["old_logprobs"], mb["rollout_logprobs"], ppo.tis_cap)
    loss, metrics = POLICY_LOSSES.get(loss_name)(
        logp, mb["old_logprobs"], mb["advantages"], mask, clip_eps=ppo.clip_eps, clip_eps_high=ppo.clip_eps_high,
        agg=agg, is_weights=weights, norm=norm)
    if weights is not None:
        metrics.update(is_weight_metrics(mb["old_logprobs"], mb["rollout_logprobs"], ppo.tis_cap, mask))
    if ppo.entropy_coef > 0:  # a bonus: higher entropy lowers the loss
        loss = loss - ppo.entropy_coef * aggregate_loss(entropy, mask, agg, norm)
    if ppo.kl.placement == "loss" and kl_coef > 0:
        # Selected first: k2's square and k3's exp of an inf or NaN at padding would make its gradient NaN.
        kl_tok = KL_ESTIMATORS.get(ppo.kl.estimator)(*select_valid(mask, logp, mb["ref_logprobs"]))
        loss = loss + kl_coef * aggregate_loss(kl_tok, mask, agg, norm)
        metrics["kl_loss"] = aggregate_loss(kl_tok.detach(), mask, agg).item()
    # Logged per micro-batch as its own mean, so the figure does not depend on how the step is cut.
    metrics.update(policy_loss=loss.item() if norm is None else _local(loss, norm, mask, agg),
                   entropy=aggregate_loss(entropy.detach(), mask).item())
    return loss, metrics


def value_objective(ppo: PPOSettings, values: Tensor, mb: dict[str, Tensor],
                    norm: Normalizer | None = None) -> tuple[Tensor, dict[str, float]]:
    """c_V · ½ mean_t max((V − R)², (V_old + clip(V − V_old, ±ε_V) − R)²), the token mean over the step."""
    loss, metrics = VALUE_LOSSES.get("clipped")(values, mb["old_values"], mb["returns"], mb["response_mask"],
                                                clip_eps=ppo.value_clip_eps, norm=norm)
    metrics["value_loss"] = loss.item() if norm is None else _local(loss, norm, mb["response_mask"], "token-mean")
    return ppo.value_loss_coef * loss, metrics


def _local(share: Tensor, norm: Normalizer, mask: Tensor, agg: str) -> float:
    """A micro-batch's share of the step's loss, rescaled to the micro-batch's own mean."""
    own = Normalizer.of(mask, horizon=norm.horizon)
    if agg == "token-mean":
        return share.item() * norm.tokens / max(own.tokens, 1.0)
    return share.item() * norm.sequences / max(own.sequences, 1.0)
