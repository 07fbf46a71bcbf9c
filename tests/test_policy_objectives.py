"""GSPO, CISPO, Dr. GRPO and the learner/critic objectives against plain loops of the papers' formulas."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_ray.algos import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, mask_from_lengths
from rlhf_ray.algos.objectives import policy_objective, value_objective
from rlhf_ray.config.loading import load_config

pytestmark = pytest.mark.unit

LENGTHS = [3, 1, 4, 2]


def _inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = mask_from_lengths(torch.tensor(LENGTHS), 4)
    old = -torch.rand(4, 4, generator=g)
    logp = (old + 0.3 * torch.randn(4, 4, generator=g)).requires_grad_(True)
    adv = torch.tensor([1.0, 0.5, 2.0, -1.0]).unsqueeze(-1).expand(4, 4).clone()  # one advantage per sequence
    return logp, old, adv, mask


def _clip(x, lo, hi):
    return min(max(x, lo), hi)


def test_gspo_is_the_papers_sequence_objective_and_gradient():
    logp, old, adv, mask = _inputs()
    eps_lo, eps_hi = 0.05, 0.08
    loss, m = POLICY_LOSSES.get("gspo")(logp, old, adv, mask, clip_eps=eps_lo, clip_eps_high=eps_hi,
                                        agg="seq-mean-token-mean")
    loss.backward()
    # J = 1/G Σ_i min(s_i A_i, clip(s_i) A_i), s_i = exp(1/|y_i| Σ_t (logp - old)); gradient by autograd
    # of that sequence-level formula, written with plain Python sums per sequence.
    ref_logp = logp.detach().clone().requires_grad_(True)
    terms = []
    for i, n in enumerate(LENGTHS):
        s = torch.exp(sum(ref_logp[i, t] - old[i, t] for t in range(n)) / n)
        a = float(adv[i, 0])
        terms.append(-torch.minimum(s * a, s.clamp(1 - eps_lo, 1 + eps_hi) * a))
    ref = sum(terms) / len(LENGTHS)
    ref.backward()
    assert loss.item() == pytest.approx(ref.item(), abs=1e-6)
    assert torch.allclose(logp.grad, ref_logp.grad, atol=1e-6)
    seq_ratio = [math.exp(float(sum(logp[i, t].detach() - old[i, t] for t in range(n)) / n))
                 for i, n in enumerate(LENGTHS)]
    # the clip binds when the ratio left the range on the side the advantage pushes towards
    binding = [bool((s > 1 + eps_hi and adv[i, 0] > 0) or (s < 1 - eps_lo and adv[i, 0] < 0))
               for i, s in enumerate(seq_ratio)]
    assert any(binding) and not all(binding), "the inputs must exercise the clip"
    for i, b in enumerate(binding):  # a clipped sequence loses its gradient whole, not token by token
        assert bool((logp.grad[i, :LENGTHS[i]] == 0).all()) == b, i
    assert (logp.grad * (1 - mask)).abs().sum() == 0


def test_cispo_keeps_every_tokens_gradient_with_a_clipped_detached_weight():
    logp, old, adv, mask = _inputs(1)
    eps_lo, eps_hi = 0.1, 0.2
    loss, m = POLICY_LOSSES.get("cispo")(logp, old, adv, mask, clip_eps=eps_lo, clip_eps_high=eps_hi)
    loss.backward()
    n_tok = sum(LENGTHS)
    value, grad, clipped = 0.0, torch.zeros(4, 4), 0
    for i, n in enumerate(LENGTHS):
        for t in range(n):
            r = math.exp(float(logp[i, t] - old[i, t]))
            w = _clip(r, 1 - eps_lo, 1 + eps_hi)
            clipped += w != r
            a = float(adv[i, t])
            value += -w * a * float(logp[i, t]) / n_tok
            grad[i, t] = -w * a / n_tok  # d/dlogp of −sg(w)·A·logp: the weight carries no gradient
    assert loss.item() == pytest.approx(value, abs=1e-6)
    assert torch.allclose(logp.grad, grad, atol=1e-6)
    assert clipped > 0 and m["clipfrac"] == pytest.approx(clipped / n_tok)
    assert (logp.grad[mask.bool()] != 0).all(), "unlike PPO's clip, no token loses its gradient"


def test_dr_grpo_centres_without_std_and_grpo_divides_by_it():
    scores = torch.tensor([1.0, 0.0, 0.0, 0.0, 1.0, 1.0])
    mask = mask_from_lengths(torch.tensor([2, 1, 3, 1, 1, 2]), 3)
    dr, _ = ADVANTAGE_ESTIMATORS.get("dr_grpo")(scores=scores, group_size=3, mask=mask, normalize_std=True)
    grpo, _ = ADVANTAGE_ESTIMATORS.get("grpo")(scores=scores, group_size=3, mask=mask)
    for g in range(2):
        group = scores[3 * g:3 * g + 3].tolist()
        mean = sum(group) / 3
        std = math.sqrt(sum((x - mean) ** 2 for x in group) / 2)
        for j in range(3):
            i = 3 * g + j
            assert float(dr[i, 0]) == pytest.approx(group[j] - mean)  # normalize_std is ignored: never scaled
            assert float(grpo[i, 0]) == pytest.approx((group[j] - mean) / (std + 1e-6), rel=1e-5)
    assert (dr * (1 - mask)).abs().sum() == 0


def test_gae_selects_padding_so_non_finite_values_cannot_spread():
    mask = mask_from_lengths(torch.tensor([2, 3]), 3)
    values = torch.tensor([[0.5, 0.2, float("nan")], [0.1, 0.3, 0.4]])
    rewards = torch.tensor([[0.0, 1.0, float("inf")], [0.0, 0.0, 1.0]])
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards=rewards, values=values, mask=mask, gamma=1.0, lam=1.0)
    assert torch.isfinite(adv).all() and torch.isfinite(ret).all()
    assert float(adv[0, 1]) == pytest.approx(1.0 - 0.2) and float(adv[0, 0]) == pytest.approx(1.0 - 0.5)
    assert adv[0, 2] == 0
    whitened, _ = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards=rewards, values=values, mask=mask, normalize_std=True)
    assert torch.isfinite(whitened).all()


# ---------------------------------------------------------------- the learner's and critic's objectives


def _mb():
    logp, old, adv, mask = _inputs(2)
    g = torch.Generator().manual_seed(5)
    return logp, {"old_logprobs": old, "advantages": adv, "response_mask": mask,
                  "ref_logprobs": old - 0.2 * torch.rand(4, 4, generator=g),
                  "rollout_logprobs": old + 0.3 * torch.randn(4, 4, generator=g)}


def _ppo(*extra):
    return load_config(overrides=list(extra)).ppo


def _mean(x, mask):
    vals = [float(x[i, t]) for i in range(x.shape[0]) for t in range(x.shape[1]) if mask[i, t]]
    return sum(vals) / len(vals)


def test_entropy_bonus_lowers_the_loss_and_kl_in_loss_raises_it():
    logp, mb = _mb()
    entropy = torch.rand(4, 4)
    mask = mb["response_mask"]
    base, _ = policy_objective(_ppo("ppo.tis_cap=null"), "ppo", "token-mean", logp, entropy, mb, kl_coef=0.0)
    bonus, m = policy_objective(_ppo("ppo.tis_cap=null", "ppo.entropy_coef=0.1"), "ppo", "token-mean", logp, entropy,
                                mb, kl_coef=0.0)
    assert bonus.item() == pytest.approx(base.item() - 0.1 * _mean(entropy, mask), abs=1e-6)
    assert m["entropy"] == pytest.approx(_mean(entropy, mask), abs=1e-6)
    kl_cfg = _ppo("ppo.tis_cap=null", "ppo.kl.placement=loss", "ppo.kl.estimator=k1")
    with_kl, m = policy_objective(kl_cfg, "ppo", "token-mean", logp, entropy, mb, kl_coef=0.5)
    kl = _mean(logp.detach() - mb["ref_logprobs"], mask)
    assert with_kl.item() == pytest.approx(base.item() + 0.5 * kl, abs=1e-6)
    assert m["kl_loss"] == pytest.approx(kl, abs=1e-6)
    in_reward, m = policy_objective(_ppo("ppo.tis_cap=null"), "ppo", "token-mean", logp, entropy, mb, kl_coef=0.5)
    assert in_reward.item() == pytest.approx(base.item()) and "kl_loss" not in m  # placement=reward: not in the loss


def test_truncated_importance_weights_multiply_each_tokens_loss():
    logp, mb = _mb()
    cap = 1.1
    loss, m = policy_objective(_ppo(f"ppo.tis_cap={cap}"), "ppo", "token-mean", logp, torch.zeros(4, 4), mb, 0.0)
    total, n = 0.0, 0
    for i, L in enumerate(LENGTHS):
        for t in range(L):
            rho = math.exp(float(logp[i, t] - mb["old_logprobs"][i, t]))
            a = float(mb["advantages"][i, t])
            w = min(math.exp(float(mb["old_logprobs"][i, t] - mb["rollout_logprobs"][i, t])), cap)
            total += -w * min(rho * a, _clip(rho, 0.8, 1.2) * a)
            n += 1
    assert loss.item() == pytest.approx(total / n, abs=1e-6)
    assert 0 < m["is_capped_frac"] < 1


def test_value_objective_scales_the_clipped_value_loss_by_its_coefficient():
    g = torch.Generator().manual_seed(3)
    mask = mask_from_lengths(torch.tensor(LENGTHS), 4)
    v, old, ret = (torch.randn(4, 4, generator=g) for _ in range(3))
    mb = {"old_values": old, "returns": ret, "response_mask": mask}
    loss, m = value_objective(_ppo("ppo.value_loss_coef=0.5", "ppo.value_clip_eps=0.2"), v, mb)
    per_tok = torch.maximum((v - ret) ** 2, (old + (v - old).clamp(-0.2, 0.2) - ret) ** 2)
    assert loss.item() == pytest.approx(0.5 * 0.5 * _mean(per_tok, mask), abs=1e-6)
    assert m["value_loss"] == pytest.approx(0.5 * _mean(per_tok, mask), abs=1e-6)
