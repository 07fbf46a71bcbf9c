"""Policy / value / SFT / reward-model / preference losses vs hand-computed references."""
import math

import pytest
import torch

from rlhf_ray.algos import (
    POLICY_LOSSES,
    is_weight_metrics,
    truncated_is_weights,
    PREFERENCE_LOSSES,
    VALUE_LOSSES,
    aggregate_loss,
    bradley_terry_loss,
    kto_loss,
    kto_reference_point,
    mask_from_lengths,
    masked_sum,
    preference_metrics,
    sft_loss,
)

pytestmark = pytest.mark.unit


def logsig(x):
    return -math.log1p(math.exp(-x)) if x >= 0 else x - math.log1p(math.exp(x))


# ---------------------------------------------------------------- PPO


def ppo_inputs():
    # token: 0 upper clip (A>0), 1 low ratio A>0 (unclipped), 2 inside range A<0,
    #        3 lower clip (A<0), 4 high ratio A<0 (unclipped), 5 padding
    ratios = [1.5, 0.5, 1.1, 0.5, 1.5, 3.0]
    adv = torch.tensor([[1.0, 1.0, -1.0, -1.0, -1.0, 5.0]])
    old = torch.zeros(1, 6)
    logp = torch.tensor([ratios]).log().requires_grad_(True)
    mask = torch.tensor([[1.0, 1, 1, 1, 1, 0]])
    return logp, old, adv, mask, ratios


def test_ppo_policy_loss_hand_computed():
    logp, old, adv, mask, ratios = ppo_inputs()
    loss, m = POLICY_LOSSES.get("ppo")(logp, old, adv, mask, clip_eps=0.2)
    per_tok = [-1.2, -0.5, 1.1, 0.8, 1.5]
    assert loss.item() == pytest.approx(sum(per_tok) / 5, abs=1e-6)
    assert m["clipfrac"] == pytest.approx(2 / 5)
    assert m["ratio_mean"] == pytest.approx(sum(ratios[:5]) / 5, abs=1e-6)
    assert m["approx_kl"] == pytest.approx(sum(0.5 * math.log(r) ** 2 for r in ratios[:5]) / 5, abs=1e-6)
    assert all(isinstance(v, float) for v in m.values())


def test_ppo_gradient_zero_on_clipped_and_padded_tokens():
    logp, old, adv, mask, ratios = ppo_inputs()
    loss, _ = POLICY_LOSSES.get("ppo")(logp, old, adv, mask)
    loss.backward()
    # d/dlogp of -rho*A/N is -A*rho/N where the unclipped term is active.
    expect = [0.0, -0.5 / 5, 1.1 / 5, 0.0, 1.5 / 5, 0.0]
    assert logp.grad[0].tolist() == pytest.approx(expect, abs=1e-6)


def test_ppo_clip_higher_and_seq_mean():
    logp, old, adv, mask, _ = ppo_inputs()
    loss, m = POLICY_LOSSES.get("ppo")(logp, old, adv, mask, clip_eps=0.2, clip_eps_high=0.6)
    assert loss.item() == pytest.approx((-1.5 - 0.5 + 1.1 + 0.8 + 1.5) / 5, abs=1e-6)
    assert m["clipfrac"] == pytest.approx(1 / 5)
    # Two rows: lengths 5 and 1 -> mean of row means.
    logp2 = torch.cat([logp.detach(), torch.log(torch.tensor([[1.5, 1, 1, 1, 1, 1]]))])
    adv2 = torch.cat([adv, torch.tensor([[2.0, 0, 0, 0, 0, 0]])])
    mask2 = torch.cat([mask, torch.tensor([[1.0, 0, 0, 0, 0, 0]])])
    loss, _ = POLICY_LOSSES.get("ppo")(logp2, torch.zeros(2, 6), adv2, mask2, agg="seq-mean-token-mean")
    assert loss.item() == pytest.approx(((-1.2 - 0.5 + 1.1 + 0.8 + 1.5) / 5 + -2.4) / 2, abs=1e-6)
    with pytest.raises(ValueError, match="unknown loss aggregation"):
        aggregate_loss(logp2, mask2, "sum")


def test_ppo_padding_values_do_not_matter():
    logp, old, adv, mask, _ = ppo_inputs()
    a, _ = POLICY_LOSSES.get("ppo")(logp, old, adv, mask)
    logp_b = logp.detach().clone()
    logp_b[0, 5] = 40.0
    adv_b = adv.clone()
    adv_b[0, 5] = float("nan")
    b, _ = POLICY_LOSSES.get("ppo")(logp_b, old, adv_b, mask)
    assert a.item() == pytest.approx(b.item())


def test_truncated_is_weights_closed_form():
    old = torch.log(torch.tensor([[0.5, 0.2, 0.9]]))
    behaviour = torch.log(torch.tensor([[0.25, 0.4, 0.1]]))
    w = truncated_is_weights(old, behaviour, cap=2.0)
    assert w.tolist()[0] == pytest.approx([2.0, 0.5, 2.0])  # 0.5/0.25 = 2, 0.2/0.4, 0.9/0.1 = 9 → 2
    m = is_weight_metrics(old, behaviour, 2.0, torch.tensor([[1.0, 1.0, 0.0]]))
    assert m == pytest.approx({"is_weight_mean": 1.25, "is_capped_frac": 0.0})
    assert truncated_is_weights(old, old, 2.0).tolist()[0] == pytest.approx([1.0, 1.0, 1.0])
    x = old.clone().requires_grad_()
    assert not truncated_is_weights(x, behaviour, 2.0).requires_grad


def test_ppo_loss_with_is_weights_matches_a_loop():
    logp, old, adv, mask, _ = ppo_inputs()
    weights = torch.tensor([[0.5, 2.0, 1.0, 0.0, 1.5, 7.0]])
    loss, _ = POLICY_LOSSES.get("ppo")(logp, old, adv, mask, clip_eps=0.2, is_weights=weights)
    total, count = 0.0, 0
    for t in range(logp.shape[1]):
        if mask[0, t]:
            rho = math.exp(logp[0, t].item() - old[0, t].item())
            a = adv[0, t].item()
            total += -weights[0, t].item() * min(rho * a, min(max(rho, 0.8), 1.2) * a)
            count += 1
    assert loss.item() == pytest.approx(total / count, abs=1e-6)
    ones, _ = POLICY_LOSSES.get("ppo")(logp, old, adv, mask, is_weights=torch.ones_like(logp))
    plain, _ = POLICY_LOSSES.get("ppo")(logp, old, adv, mask)
    assert ones.item() == pytest.approx(plain.item())


# ---------------------------------------------------------------- value, SFT, reward model


def test_clipped_value_loss_hand_computed():
    values = torch.tensor([[1.0, 0.0, 2.0, 1.0, 9.0]])
    old = torch.tensor([[0.5, 0.5, 2.0, 0.5, 0.0]])
    returns = torch.tensor([[0.0, 1.0, 2.5, 2.0, 0.0]])
    mask = torch.tensor([[1.0, 1, 1, 1, 0]])
    # per token max(raw, clipped): 1 vs 0.49, 1 vs 0.49, 0.25 vs 0.25, 1 vs 1.69
    loss, m = VALUE_LOSSES.get("clipped")(values, old, returns, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(0.5 * (1 + 1 + 0.25 + 1.69) / 4, abs=1e-6)
    assert m["vf_clipfrac"] == pytest.approx(1 / 4)
    assert m["value_mean"] == pytest.approx(1.0)


def test_sft_loss_masked_negative_mean_loglik():
    logp = torch.tensor([[-1.0, -2.0, float("-inf")], [-0.5, -0.5, -0.5]])
    mask = mask_from_lengths(torch.tensor([2, 3]), 3)
    assert sft_loss(logp, mask).item() == pytest.approx((1 + 2 + 1.5) / 5)


def test_bradley_terry_loss():
    c, r = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss, m = bradley_terry_loss(c, r)
    assert loss.item() == pytest.approx(-(logsig(1.0) + logsig(-1.0)) / 2)
    assert m == pytest.approx({"accuracy": 0.5, "margin": 0.0})
    loss, _ = bradley_terry_loss(c, r, margin=torch.tensor([0.5, 0.5]))
    assert loss.item() == pytest.approx(-(logsig(0.5) + logsig(-1.5)) / 2)


# ---------------------------------------------------------------- DPO family


PC, PR, RC, RR = [-10.0, -3.0, -7.0], [-12.0, -2.0, -7.0], [-11.0, -3.5, -6.0], [-11.0, -2.5, -6.0]


def t(x):
    return torch.tensor(x, dtype=torch.float64)


def test_dpo_closed_form_and_rewards():
    beta = 0.1
    losses, cr, rr = PREFERENCE_LOSSES.get("dpo")(t(PC), t(PR), t(RC), t(RR), beta)
    for i in range(3):
        h = (PC[i] - RC[i]) - (PR[i] - RR[i])
        assert losses[i].item() == pytest.approx(math.log1p(math.exp(-beta * h)))
        assert cr[i].item() == pytest.approx(beta * (PC[i] - RC[i]))
        assert rr[i].item() == pytest.approx(beta * (PR[i] - RR[i]))


def test_dpo_log2_limits_and_label_smoothing():
    dpo = PREFERENCE_LOSSES.get("dpo")
    tiny, _, _ = dpo(t(PC), t(PR), t(RC), t(RR), beta=1e-9)
    assert tiny.tolist() == pytest.approx([math.log(2)] * 3)
    x = t([-4.0, -9.0])
    same, _, _ = dpo(x, x, t([-1.0, -2.0]), t([-1.0, -2.0]), beta=0.5)
    assert same.tolist() == pytest.approx([math.log(2)] * 2)
    eps, beta = 0.2, 0.3
    ls, _, _ = dpo(t(PC), t(PR), t(RC), t(RR), beta, label_smoothing=eps)
    for i in range(3):
        z = beta * ((PC[i] - RC[i]) - (PR[i] - RR[i]))
        assert ls[i].item() == pytest.approx(-(1 - eps) * logsig(z) - eps * logsig(-z))
    with pytest.raises(ValueError, match="ref_chosen_logps"):
        dpo(t(PC), t(PR), None, None, beta)


def test_dpo_sgd_step_raises_chosen_relative_to_rejected():
    theta = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    chosen, rejected = [0, 1], [2, 3]

    def seq_logps():
        lp = torch.log_softmax(theta, -1)
        return lp[chosen].sum().unsqueeze(0), lp[rejected].sum().unsqueeze(0)

    pc, pr = seq_logps()
    ref_c, ref_r = pc.detach(), pr.detach()
    losses, _, _ = PREFERENCE_LOSSES.get("dpo")(pc, pr, ref_c, ref_r, beta=0.5)
    losses.mean().backward()
    with torch.no_grad():
        theta -= 1.0 * theta.grad
        pc2, pr2 = seq_logps()
    assert (pc2 - pr2).item() > (pc - pr).item()
    assert pc2.item() > pc.item()


def test_ipo_closed_form():
    beta = 0.25
    losses, cr, _ = PREFERENCE_LOSSES.get("ipo")(t(PC), t(PR), t(RC), t(RR), beta)
    for i in range(3):
        h = (PC[i] - RC[i]) - (PR[i] - RR[i])
        assert losses[i].item() == pytest.approx((h - 1 / (2 * beta)) ** 2)
        assert cr[i].item() == pytest.approx(beta * (PC[i] - RC[i]))


def test_simpo_plain_math():
    beta, gamma = 2.0, 0.7
    lc, lr = [4, 2, 7], [5, 1, 3]
    losses, cr, rr = PREFERENCE_LOSSES.get("simpo")(
        t(PC), t(PR), None, None, beta, gamma=gamma,
        chosen_lengths=torch.tensor(lc), rejected_lengths=torch.tensor(lr))
    for i in range(3):
        z = beta / lc[i] * PC[i] - beta / lr[i] * PR[i] - gamma
        assert losses[i].item() == pytest.approx(-logsig(z))
        assert cr[i].item() == pytest.approx(beta * PC[i] / lc[i])
        assert rr[i].item() == pytest.approx(beta * PR[i] / lr[i])
    with pytest.raises(ValueError, match="chosen_lengths"):
        PREFERENCE_LOSSES.get("simpo")(t(PC), t(PR), None, None, beta)


def test_orpo_plain_math():
    lam, beta = 0.3, 0.1
    lc, lr = [4, 2, 7], [5, 1, 3]
    losses, cr, _ = PREFERENCE_LOSSES.get("orpo")(
        t(PC), t(PR), None, None, beta, lam=lam,
        chosen_lengths=torch.tensor(lc), rejected_lengths=torch.tensor(lr))
    for i in range(3):
        aw, al = PC[i] / lc[i], PR[i] / lr[i]
        log_odds = (aw - math.log(1 - math.exp(aw))) - (al - math.log(1 - math.exp(al)))
        assert losses[i].item() == pytest.approx(-aw - lam * logsig(log_odds), rel=1e-6)
        assert cr[i].item() == pytest.approx(beta * aw, rel=1e-6)


def test_orpo_numerically_stable_near_zero_and_very_negative_logps():
    pc = torch.tensor([-1e-9, -200.0, -1e-3], requires_grad=True)
    pr = torch.tensor([-300.0, -1e-12, -2e-3], requires_grad=True)
    ones = torch.ones(3)
    losses, _, _ = PREFERENCE_LOSSES.get("orpo")(pc, pr, None, None, 0.1, lam=0.5,
                                                  chosen_lengths=ones, rejected_lengths=ones)
    losses.sum().backward()
    assert torch.isfinite(losses).all() and torch.isfinite(pc.grad).all() and torch.isfinite(pr.grad).all()
    a, b = -1e-3, -2e-3  # float32-accurate branch near zero
    log_odds = (a - math.log(-math.expm1(a))) - (b - math.log(-math.expm1(b)))
    assert losses[2].item() == pytest.approx(-a - 0.5 * logsig(log_odds), rel=1e-4)


def test_preference_losses_ignore_masked_tokens():
    torch.manual_seed(0)
    T, lengths = 6, torch.tensor([4, 2])
    mask = mask_from_lengths(lengths, T)
    tok = [torch.randn(2, T) - 2 for _ in range(4)]
    dirty = [torch.where(mask.bool(), x, torch.full_like(x, float("nan"))) for x in tok]
    kw = dict(chosen_lengths=lengths, rejected_lengths=lengths, beta=0.2)
    for name in PREFERENCE_LOSSES.names():
        clean_out = PREFERENCE_LOSSES.get(name)(*[masked_sum(x, mask, dim=-1) for x in tok], **kw)
        dirty_out = PREFERENCE_LOSSES.get(name)(*[masked_sum(x, mask, dim=-1) for x in dirty], **kw)
        for a, b in zip(clean_out, dirty_out):
            torch.testing.assert_close(a, b)
        ref_c = [sum(tok[0][b, :n].tolist()) for b, n in enumerate(lengths.tolist())]
        assert masked_sum(tok[0], mask, dim=-1).tolist() == pytest.approx(ref_c, rel=1e-6)


def test_kto_loss_and_reference_point():
    beta, z0, wd, wu = 0.5, 0.3, 1.0, 1.5
    pol, ref = [-2.0, -5.0, -1.0, -4.0], [-3.0, -4.0, -1.5, -4.0]
    labels = torch.tensor([True, True, False, False])
    losses, rewards = kto_loss(t(pol), t(ref), labels, beta, z0, wd, wu)
    sig = lambda x: 1 / (1 + math.exp(-x))  # noqa: E731
    for i in range(4):
        r = pol[i] - ref[i]
        expect = wd * (1 - sig(beta * (r - z0))) if labels[i] else wu * (1 - sig(beta * (z0 - r)))
        assert losses[i].item() == pytest.approx(expect)
        assert rewards[i].item() == pytest.approx(beta * r)
    neg, _ = kto_loss(t(pol), t(ref), labels, beta, -2.0)
    zero, _ = kto_loss(t(pol), t(ref), labels, beta, 0.0)
    torch.testing.assert_close(neg, zero)  # z0 clamped at 0
    assert kto_reference_point(t([-1.0, -2.0]), t([-2.0, -2.0])) == pytest.approx(0.5)
    assert kto_reference_point(t([-3.0]), t([-1.0])) == 0.0
    x = torch.tensor([-1.0], requires_grad=True)
    assert isinstance(kto_reference_point(x, torch.tensor([-2.0])), float)


def test_preference_metrics():
    m = preference_metrics(torch.tensor([1.0, 0.0, 2.0]), torch.tensor([0.0, 1.0, 1.0]))
    assert m == pytest.approx({"reward_chosen": 1.0, "reward_rejected": 2 / 3,
                               "margin": 1 / 3, "accuracy": 2 / 3})
