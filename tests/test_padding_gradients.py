"""Whatever sits at padding (+inf, -inf, NaN in any input), every policy and value objective gives a finite
loss, a finite gradient, exactly zero gradient at padding, and the same loss and gradient at the valid
tokens as with clean padding: each objective selects its inputs by the mask before any operation whose
gradient could be non-finite (exp of a log-ratio, a product with an advantage, a square)."""

from __future__ import annotations

import math
from functools import lru_cache

import pytest
import torch

from rlhf_ray.algos import AGGREGATIONS, POLICY_LOSSES, VALUE_LOSSES, Normalizer, mask_from_lengths
from rlhf_ray.algos.objectives import policy_objective, value_objective
from rlhf_ray.config.loading import load_config

pytestmark = pytest.mark.unit

T = 7
HORIZON = 3 * T  # Dr. GRPO's constant L, longer than the batch as the generation budget is
POISONS = {"+inf": math.inf, "-inf": -math.inf, "nan": math.nan}
HOLES = torch.tensor([[1, 1, 0, 0, 1, 1, 0],   # observation tokens between turns, trailing padding
                      [0, 0, 1, 1, 1, 0, 0],   # a leading hole
                      [0, 0, 0, 0, 0, 0, 0],   # no policy token at all
                      [1, 0, 1, 0, 1, 0, 1],
                      [1, 1, 1, 1, 1, 1, 1]], dtype=torch.float64)
MASKS = {"prefix": mask_from_lengths(torch.tensor([4, 1, 0, 7, 2]), T).double(), "holes": HOLES}
POLICY_INPUTS = ("logp", "old_logprobs", "rollout_logprobs", "ref_logprobs", "advantages", "entropy")
VALUE_INPUTS = ("values", "old_values", "returns")


def _norms(mask):
    """The batch as the whole step (norm=None), and as a step counted by a Normalizer with L = HORIZON."""
    return {"own": None, "step": Normalizer.of(mask, horizon=HORIZON)}


def _clean(names, seed):
    """Finite random inputs everywhere (padding holds finite garbage too); log-probs near each other,
    so some ratios clip and some do not."""
    g = torch.Generator().manual_seed(seed)
    base = -torch.rand(5, T, generator=g, dtype=torch.float64) * 2
    return {k: base + 0.3 * torch.randn(5, T, generator=g, dtype=torch.float64) for k in names}


def _poisoned(clean, mask, which, value):
    """``clean`` with the padding entries of the inputs in ``which`` set to ``value``."""
    return {k: torch.where(mask == 0, torch.full_like(v, value), v) if k in which else v.clone()
            for k, v in clean.items()}


def _check(run, clean, mask, leaves, inputs):
    """Run ``run(tensors) -> (loss, metrics)`` on clean and poisoned inputs and compare; returns the failures."""
    def evaluate(tensors):
        for k in leaves:
            tensors[k].requires_grad_(True)
        loss, metrics = run(tensors)
        grads = torch.autograd.grad(loss, [tensors[k] for k in leaves], allow_unused=True)
        return loss.detach(), metrics, [torch.zeros_like(tensors[k]) if g is None else g for k, g in zip(leaves, grads)]

    ref_loss, _, ref_grads = evaluate({k: v.clone() for k, v in clean.items()})
    valid, failures = mask != 0, []
    for which in [(k,) for k in inputs] + [inputs]:
        for pname, value in POISONS.items():
            loss, metrics, grads = evaluate(_poisoned(clean, mask, which, value))
            case = f"{'+'.join(which)}={pname}"
            if not torch.isfinite(loss) or loss.item() != pytest.approx(ref_loss.item(), abs=1e-12, rel=0):
                failures.append(f"{case}: loss {loss.item()} vs {ref_loss.item()}")
            bad = [k for k, v in metrics.items() if not math.isfinite(v)]
            if bad:
                failures.append(f"{case}: non-finite metrics {bad}")
            for name, g, ref in zip(leaves, grads, ref_grads):
                if not torch.isfinite(g).all():
                    failures.append(f"{case}: d/d{name} non-finite at {int((~torch.isfinite(g)).sum())} entries")
                elif (g[~valid] != 0).any():
                    failures.append(f"{case}: non-zero d/d{name} at padding")
                elif not torch.allclose(g[valid], ref[valid], atol=1e-12, rtol=0):
                    failures.append(f"{case}: d/d{name} at valid tokens changed")
    return failures


@lru_cache(maxsize=None)
def _ppo_config(estimator):
    return load_config(overrides=["ppo.entropy_coef=0.05", "ppo.kl.placement=loss", f"ppo.kl.estimator={estimator}",
                                  "ppo.tis_cap=1.5", "ppo.clip_eps=0.1"]).ppo


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("loss_name", POLICY_LOSSES.names())
def test_policy_losses_are_blind_to_non_finite_padding(loss_name, agg, mask_kind):
    mask = MASKS[mask_kind]
    clean = _clean(("logp", "old_logprobs", "advantages", "is_weights"), seed=1)
    clean["is_weights"] = clean["is_weights"].exp()
    loss_fn = POLICY_LOSSES.get(loss_name)
    failures = []
    for norm_kind, norm in _norms(mask).items():
        def run(x):
            return loss_fn(x["logp"], x["old_logprobs"], x["advantages"], mask, clip_eps=0.1, agg=agg,
                           is_weights=x["is_weights"], norm=norm)
        failures += [f"{norm_kind}: {f}" for f in _check(run, clean, mask, ("logp",), tuple(clean))]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
@pytest.mark.parametrize("agg", AGGREGATIONS)
@pytest.mark.parametrize("loss_name", POLICY_LOSSES.names())
def test_policy_objective_is_blind_to_non_finite_padding(loss_name, agg, estimator, mask_kind):
    """The learner's whole objective: the policy loss with truncated IS weights from the rollout's log-probs,
    the entropy bonus and the KL penalty in the loss."""
    mask = MASKS[mask_kind]
    clean = _clean(POLICY_INPUTS, seed=2)
    clean["entropy"] = clean["entropy"].abs()
    failures = []
    for norm_kind, norm in _norms(mask).items():
        def run(x):
            mb = {k: x[k] for k in POLICY_INPUTS if k not in ("logp", "entropy")}
            return policy_objective(_ppo_config(estimator), loss_name, agg, x["logp"], x["entropy"],
                                    {**mb, "response_mask": mask}, kl_coef=0.2, norm=norm)
        failures += [f"{norm_kind}: {f}" for f in _check(run, clean, mask, ("logp", "entropy"), POLICY_INPUTS)]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("mask_kind", MASKS)
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_value_loss_is_blind_to_non_finite_padding(agg, mask_kind):
    assert VALUE_LOSSES.names() == ["clipped"]  # the one value loss value_objective calls
    mask = MASKS[mask_kind]
    clean = _clean(VALUE_INPUTS, seed=3)
    failures = []
    for norm_kind, norm in _norms(mask).items():
        def run(x):
            return VALUE_LOSSES.get("clipped")(x["values"], x["old_values"], x["returns"], mask, clip_eps=0.2,
                                               agg=agg, norm=norm)
        failures += [f"{norm_kind}: {f}" for f in _check(run, clean, mask, ("values",), VALUE_INPUTS)]

        def run_objective(x):
            return value_objective(_ppo_config("k3"), x["values"], {**x, "response_mask": mask}, norm=norm)
        if agg == "token-mean":  # value_objective always takes the token mean
            failures += [f"objective {norm_kind}: {f}"
                         for f in _check(run_objective, clean, mask, ("values",), VALUE_INPUTS)]
    assert not failures, "\n".join(failures)
