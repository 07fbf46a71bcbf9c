"""The gradient of an optimiser step is the gradient of the documented mean over the whole step,
however the step is cut into micro-batches and data-parallel ranks.

The step is run the way DeepSpeedWorker runs it: each micro-batch's loss takes the step's counts
(its Normalizer, summed over the rank's micro-batches and over ranks, as ``step_normalizer``
all-reduces them) and is multiplied by accumulation steps × ranks; DeepSpeed then divides each
micro-batch's loss by the accumulation steps and averages gradients over ranks (both simulated here,
as engine.backward and its all-reduce do). The reference is the objective on the whole step at once.
"""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.algos import (
    AGGREGATIONS,
    Normalizer,
    aggregate_loss,
    bradley_terry_loss,
    mask_from_lengths,
    masked_sum,
    sft_loss,
)
from rlhf_ray.algos.objectives import policy_objective, value_objective
from rlhf_ray.algos.offline import kto_objective, preference_objective
from rlhf_ray.config.loading import load_config

pytestmark = pytest.mark.unit

LENGTHS = [9, 1, 2, 0, 5, 3, 7, 4]  # an empty response too: a sequence mean skips it
T = 10
# (ranks, micro-batches per rank): one micro-batch, four, two ranks × two
LAYOUTS = [(1, 1), (1, 4), (2, 2)]


def _step_data(seed=0):
    g = torch.Generator().manual_seed(seed)
    n = len(LENGTHS)
    mask = mask_from_lengths(torch.tensor(LENGTHS), T)
    return {
        "response_mask": mask,
        "response_lengths": torch.tensor(LENGTHS),
        "old_logprobs": -torch.rand(n, T, generator=g) * 2,
        "ref_logprobs": -torch.rand(n, T, generator=g) * 2,
        "rollout_logprobs": -torch.rand(n, T, generator=g) * 2,
        "advantages": torch.randn(n, T, generator=g),
        "old_values": torch.randn(n, T, generator=g),
        "returns": torch.randn(n, T, generator=g),
        "labels": torch.tensor([1.0, 0.0, 1.0, 1.0, 0.0, 0.0, 1.0, 0.0]),
    }, (-torch.rand(n, T, generator=g) * 2)


def _rows(data, rows):
    return {k: v[rows] for k, v in data.items()}


def _gradient(objective, data, theta0, ranks, micro_per_rank, rows_per_unit=1, horizon=T):
    """The parameter gradient of one optimiser step cut into ``ranks`` × ``micro_per_rank``."""
    n = len(LENGTHS)
    per_rank, per_micro = n // ranks, n // (ranks * micro_per_rank)
    shards = [[list(range(r * per_rank + m * per_micro, r * per_rank + (m + 1) * per_micro))
               for m in range(micro_per_rank)] for r in range(ranks)]
    counts = [Normalizer.of(data["response_mask"][rows], rows_per_unit, horizon) for shard in shards for rows in shard]
    norm = sum(counts[1:], counts[0])  # what step_normalizer's all-reduce gives every rank
    grads = []
    for shard in shards:
        theta = theta0.clone().requires_grad_(True)
        for rows in shard:
            loss, _ = objective(theta[rows], _rows(data, rows), norm)
            (loss * micro_per_rank * ranks / micro_per_rank).backward()  # the trainer's scale, then engine.backward's 1/GAS
        grads.append(theta.grad)
    return torch.stack(grads).mean(0)  # data-parallel all-reduce averages


def _whole(objective, data, theta0):
    theta = theta0.clone().requires_grad_(True)
    loss, _ = objective(theta, data, None)
    loss.backward()
    return loss.detach(), theta.grad


def _check_invariant(objective, rows_per_unit=1, horizon=T):
    data, theta0 = _step_data()
    _, expected = _whole(objective, data, theta0)
    assert expected.abs().sum() > 0
    for ranks, micro in LAYOUTS:
        got = _gradient(objective, data, theta0, ranks, micro, rows_per_unit, horizon)
        assert torch.allclose(got, expected, atol=1e-6, rtol=1e-5), (ranks, micro)


PPO = load_config(overrides=["ppo.entropy_coef=0.01", "ppo.kl.placement=loss", "ppo.tis_cap=2.0"]).ppo


@pytest.mark.parametrize("loss_name", ["ppo", "gspo", "cispo"])
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_policy_objectives_same_gradient_however_the_step_is_cut(loss_name, agg):
    def objective(logp, mb, norm):
        entropy = -logp * 0.5  # any differentiable per-token term: the bonus must aggregate like the loss
        return policy_objective(PPO, loss_name, agg, logp, entropy, mb, kl_coef=0.1, norm=norm)

    _check_invariant(objective)


def test_value_objective_same_gradient_however_the_step_is_cut():
    _check_invariant(lambda v, mb, norm: value_objective(PPO, v, mb, norm))


def test_sft_same_gradient_however_the_step_is_cut():
    _check_invariant(lambda logp, mb, norm: (sft_loss(logp, mb["response_mask"], norm), {}))


OFFLINE = load_config(overrides=["algorithm=cdpo", "offline.train_file=x.jsonl", "offline.label_smoothing=0.1"]).offline


@pytest.mark.parametrize("name", ["dpo", "ipo", "cdpo", "simpo", "orpo"])
def test_preference_objectives_same_gradient_however_the_step_is_cut(name):
    def objective(theta, mb, norm):  # summed log-probs of adjacent (chosen, rejected) rows
        logps = masked_sum(theta, mb["response_mask"], dim=-1)
        ref = masked_sum(mb["ref_logprobs"], mb["response_mask"], dim=-1)
        return preference_objective(name, OFFLINE, logps, mb["response_lengths"].float(), ref, norm)

    _check_invariant(objective, rows_per_unit=2)


def test_kto_and_bradley_terry_same_gradient_however_the_step_is_cut():
    def kto(theta, mb, norm):
        logps = masked_sum(theta, mb["response_mask"], dim=-1)
        return kto_objective(OFFLINE, logps, masked_sum(mb["ref_logprobs"], mb["response_mask"], dim=-1),
                             mb["labels"], 0.3, norm)

    def bt(theta, mb, norm):
        scores = masked_sum(theta, mb["response_mask"], dim=-1)
        return bradley_terry_loss(scores[0::2], scores[1::2], 0.5, norm)

    _check_invariant(kto)
    _check_invariant(bt, rows_per_unit=2)


def test_token_mean_is_the_documented_mean_of_the_issue_example():
    """Lengths [9, 1 | 2, 1], per-token loss 1 in the first micro-batch and 0 in the second: the token
    mean over the step is 10/13 = 0.769; micro-batch means accumulated equally would give 0.5."""
    mask = mask_from_lengths(torch.tensor([9, 1, 2, 1]), 9)
    loss_tok = torch.cat([torch.ones(2, 9), torch.zeros(2, 9)])
    parts = [Normalizer.of(mask[:2]), Normalizer.of(mask[2:])]
    norm = parts[0] + parts[1]
    total = sum(aggregate_loss(loss_tok[s], mask[s], "token-mean", norm) for s in (slice(0, 2), slice(2, 4)))
    assert float(total) == pytest.approx(10 / 13)
    # by hand from the definition: a loop over valid tokens
    valid = [float(loss_tok[b, t]) for b in range(4) for t in range(9) if mask[b, t]]
    assert float(total) == pytest.approx(sum(valid) / len(valid))
    seq = sum(aggregate_loss(loss_tok[s], mask[s], "seq-mean-token-mean", norm) for s in (slice(0, 2), slice(2, 4)))
    assert float(seq) == pytest.approx((1 + 1 + 0 + 0) / 4)
    drg = sum(aggregate_loss(loss_tok[s], mask[s], "seq-mean-token-sum-norm", Normalizer(13, 4, 4, horizon=16))
              for s in (slice(0, 2), slice(2, 4)))
    assert float(drg) == pytest.approx(10 / (4 * 16))
