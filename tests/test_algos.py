"""Registry, masked helpers, KL and advantage estimators vs plain-python references."""
import math
import statistics

import pytest
import torch

from rlhf_ray.algos import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PREFERENCE_LOSSES,
    VALUE_LOSSES,
    AdaptiveKLController,
    FixedKLController,
    Registry,
    entropy_from_logits,
    kl_penalized_rewards,
    logprobs_from_logits,
    mask_from_lengths,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
)

pytestmark = pytest.mark.unit


def lengths_mask(lengths, T):
    return [[1.0 if t < n else 0.0 for t in range(T)] for n in lengths]


# ---------------------------------------------------------------- registry


def test_registry_unknown_name_lists_choices():
    with pytest.raises(KeyError) as e:
        KL_ESTIMATORS.get("k4")
    assert "unknown kl estimator 'k4'; choose one of: k1, k2, k3" in str(e.value)


def test_registry_register_get_names_and_duplicates():
    reg = Registry("thing")

    @reg.register("b")
    def b():
        return 2

    reg.register("a")(lambda: 1)
    assert reg.names() == ["a", "b"] and reg.get("b") is b and "a" in reg
    with pytest.raises(ValueError, match="already registered"):
        reg.register("b")(lambda: 3)


def test_importing_package_registers_everything():
    assert KL_ESTIMATORS.names() == ["k1", "k2", "k3"]
    assert ADVANTAGE_ESTIMATORS.names() == ["dr_grpo", "gae", "grpo", "reinforce_pp", "rloo"]
    assert POLICY_LOSSES.names() == ["cispo", "gspo", "ppo"]
    assert VALUE_LOSSES.names() == ["clipped"]
    assert PREFERENCE_LOSSES.names() == ["cdpo", "dpo", "ipo", "orpo", "simpo"]


# ---------------------------------------------------------------- masked helpers


def test_masked_mean_sum_ignore_padding_even_nan():
    x = torch.tensor([[1.0, 2.0, float("nan")], [4.0, float("inf"), 0.0]])
    mask = torch.tensor([[1, 1, 0], [1, 0, 0]], dtype=torch.bool)
    assert masked_sum(x, mask).item() == 7.0
    assert masked_mean(x, mask).item() == pytest.approx(7.0 / 3)
    assert masked_mean(x, mask, dim=-1).tolist() == pytest.approx([1.5, 4.0])
    assert masked_sum(x, mask, dim=0).tolist() == [5.0, 2.0, 0.0]


def test_masked_mean_all_zero_mask_is_zero():
    x = torch.randn(2, 3)
    zero = torch.zeros(2, 3)
    assert masked_mean(x, zero).item() == 0.0
    assert masked_mean(x, zero, dim=-1).tolist() == [0.0, 0.0]
    assert masked_var(x, zero).item() == 0.0


def test_masked_var_matches_statistics():
    x = torch.tensor([[1.0, 5.0, 2.0, 100.0], [3.0, -1.0, 50.0, 50.0]])
    mask = torch.tensor(lengths_mask([3, 2], 4))
    valid = [1.0, 5.0, 2.0, 3.0, -1.0]
    assert masked_var(x, mask).item() == pytest.approx(statistics.variance(valid))
    assert masked_var(x, mask, unbiased=False).item() == pytest.approx(statistics.pvariance(valid))


def test_masked_whiten_stats_over_valid_entries_and_padding_zero():
    torch.manual_seed(0)
    lengths = [5, 2, 7, 1]
    mask = mask_from_lengths(torch.tensor(lengths), 7)
    x = torch.randn(4, 7) * 3 + 10
    x_garbage = torch.where(mask.bool(), x, torch.full_like(x, 1e6))
    w = masked_whiten(x_garbage, mask)
    valid = [w[b, t].item() for b, n in enumerate(lengths) for t in range(n)]
    assert statistics.mean(valid) == pytest.approx(0.0, abs=1e-5)
    assert statistics.variance(valid) == pytest.approx(1.0, abs=1e-4)
    assert (w[mask == 0] == 0).all()
    torch.testing.assert_close(w, masked_whiten(x, mask))
    raw = [x[b, t].item() for b, n in enumerate(lengths) for t in range(n)]
    kept = masked_whiten(x, mask, shift_mean=False)
    kept_valid = [kept[b, t].item() for b, n in enumerate(lengths) for t in range(n)]
    assert statistics.mean(kept_valid) == pytest.approx(statistics.mean(raw), rel=1e-5)


def test_mask_from_lengths_keeps_final_eos_when_pad_equals_eos():
    eos = pad = 2
    # Row 0's real response ends with EOS; the rest of the row is EOS-as-padding.
    ids = torch.tensor([[5, 7, eos, pad, pad], [9, 9, 9, 9, eos]])
    lengths = torch.tensor([3, 5])
    mask = mask_from_lengths(lengths, ids.shape[1])
    assert mask.dtype == torch.float32
    assert mask.tolist() == [[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]]
    assert (ids != pad).float()[0, 2] == 0  # what the naive mask would drop
    with pytest.raises(ValueError):
        mask_from_lengths(torch.tensor([6]), 5)


def test_logprobs_and_entropy_from_logits_vs_python():
    torch.manual_seed(1)
    logits = torch.randn(2, 3, 5, dtype=torch.float64)
    labels = torch.randint(0, 5, (2, 3))
    lp, ent = logprobs_from_logits(logits, labels), entropy_from_logits(logits)
    for b in range(2):
        for t in range(3):
            z = logits[b, t].tolist()
            lse = math.log(sum(math.exp(v) for v in z))
            assert lp[b, t].item() == pytest.approx(z[labels[b, t]] - lse)
            assert ent[b, t].item() == pytest.approx(-sum(math.exp(v - lse) * (v - lse) for v in z))
    lp16 = logprobs_from_logits(logits.bfloat16(), labels)
    assert lp16.dtype == torch.float32
    exact = logprobs_from_logits(logits.bfloat16().double(), labels)
    torch.testing.assert_close(lp16.double(), exact, rtol=1e-5, atol=1e-5)


# ---------------------------------------------------------------- KL


def test_kl_estimators_match_definitions():
    logp = torch.tensor([-1.0, -2.0, -0.5, -3.0], dtype=torch.float64)
    ref = torch.tensor([-1.5, -1.0, -0.5, -0.1], dtype=torch.float64)
    for i in range(4):
        r = logp[i].item() - ref[i].item()
        assert KL_ESTIMATORS.get("k1")(logp, ref)[i].item() == pytest.approx(r)
        assert KL_ESTIMATORS.get("k2")(logp, ref)[i].item() == pytest.approx(r * r / 2)
        assert KL_ESTIMATORS.get("k3")(logp, ref)[i].item() == pytest.approx(math.exp(-r) - 1 + r)


def test_k3_nonnegative_and_finite_for_extreme_ratios():
    torch.manual_seed(2)
    logp = torch.cat([torch.randn(1000) * 5, torch.tensor([-1e4, 1e4])])
    ref = torch.cat([torch.randn(1000) * 5, torch.tensor([0.0, 0.0])])
    k3 = KL_ESTIMATORS.get("k3")(logp, ref)
    assert (k3 >= 0).all() and torch.isfinite(k3).all()


def test_k1_k3_monte_carlo_estimate_kl():
    p = [0.5, 0.2, 0.2, 0.1]
    q = [0.25, 0.25, 0.4, 0.1]
    true_kl = sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))
    gen = torch.Generator().manual_seed(0)
    x = torch.multinomial(torch.tensor(p), 200_000, replacement=True, generator=gen)
    logp, logq = torch.tensor(p).log()[x], torch.tensor(q).log()[x]
    for name in ("k1", "k3"):
        est = KL_ESTIMATORS.get(name)(logp, logq).mean().item()
        assert est == pytest.approx(true_kl, abs=0.01), name


def test_kl_penalized_rewards_score_on_last_valid_token():
    lengths, T, beta = [3, 1, 5, 0], 5, 0.1
    torch.manual_seed(3)
    logp, ref = torch.randn(4, T), torch.randn(4, T)
    scores = torch.tensor([1.0, -2.0, 3.0, 7.0])
    mask = mask_from_lengths(torch.tensor(lengths), T)
    rewards, kl = kl_penalized_rewards(scores, logp, ref, mask, beta, estimator="k1")
    for b, n in enumerate(lengths):
        for t in range(T):
            k = logp[b, t].item() - ref[b, t].item() if t < n else 0.0
            expect = -beta * k + (scores[b].item() if t == n - 1 else 0.0)
            assert kl[b, t].item() == pytest.approx(k, abs=1e-6)
            assert rewards[b, t].item() == pytest.approx(expect, abs=1e-6)
    assert not rewards.requires_grad


def test_adaptive_kl_controller_update_and_state_roundtrip():
    ctl = AdaptiveKLController(init_beta=0.1, target=6.0, horizon=10000)
    ctl.update(current_kl=9.0, n_steps=256)  # error 0.5 clipped to 0.2
    assert ctl.value == pytest.approx(0.1 * (1 + 0.2 * 256 / 10000))
    v = ctl.value
    ctl.update(current_kl=5.4, n_steps=100)  # error -0.1, inside the clip
    assert ctl.value == pytest.approx(v * (1 - 0.1 * 100 / 10000))
    fresh = AdaptiveKLController(init_beta=1.0, target=6.0, horizon=10000)
    fresh.load_state_dict(ctl.state_dict())
    assert fresh.value == ctl.value
    fixed = FixedKLController(0.05)
    fixed.update(100.0, 10)
    assert fixed.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(fixed.state_dict())
    assert other.value == 0.05


# ---------------------------------------------------------------- advantages


def gae_reference(rewards, values, n, gamma, lam):
    adv = [0.0] * n
    last = 0.0
    for t in reversed(range(n)):
        next_v = values[t + 1] if t + 1 < n else 0.0
        delta = rewards[t] + gamma * next_v - values[t]
        last = delta + gamma * lam * last
        adv[t] = last
    return adv


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0), (1.0, 0.9)])
def test_gae_matches_python_loop(gamma, lam):
    lengths, T = [6, 3, 1, 4], 6
    torch.manual_seed(4)
    rewards, values = torch.randn(4, T, dtype=torch.float64), torch.randn(4, T, dtype=torch.float64)
    mask = mask_from_lengths(torch.tensor(lengths), T)
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(
        token_rewards=rewards, values=values, mask=mask, gamma=gamma, lam=lam)
    for b, n in enumerate(lengths):
        r, v = rewards[b].tolist(), values[b].tolist()
        ref = gae_reference(r, v, n, gamma, lam)
        for t in range(T):
            a = ref[t] if t < n else 0.0
            assert adv[b, t].item() == pytest.approx(a, abs=1e-9)
            assert ret[b, t].item() == pytest.approx(a + v[t] if t < n else 0.0, abs=1e-9)
            if gamma == lam == 1.0 and t < n:  # Monte-Carlo return minus baseline
                assert adv[b, t].item() == pytest.approx(sum(r[t:n]) - v[t], abs=1e-9)


def test_grpo_matches_loop():
    scores = torch.tensor([1.0, 0.0, 0.0, 1.0, 2.0, 2.0, 5.0, -1.0])
    lengths, T, n = [2, 3, 1, 3, 3, 2, 1, 3], 3, 4
    mask = mask_from_lengths(torch.tensor(lengths), T)
    for normalize in (True, False):
        adv, ret = ADVANTAGE_ESTIMATORS.get("grpo")(
            scores=scores, group_size=n, mask=mask, normalize_std=normalize)
        s = scores.tolist()
        for b in range(8):
            g = s[(b // n) * n:(b // n + 1) * n]
            a = s[b] - statistics.mean(g)
            if normalize:
                a /= statistics.stdev(g) + 1e-6
            for t in range(T):
                assert adv[b, t].item() == pytest.approx(a if t < lengths[b] else 0.0, rel=1e-5)
        torch.testing.assert_close(adv, ret)


def test_grpo_identical_group_gives_zero_and_divisibility_error():
    mask = torch.ones(4, 2)
    adv, _ = ADVANTAGE_ESTIMATORS.get("grpo")(scores=torch.full((4,), 3.0), group_size=2, mask=mask)
    assert (adv == 0).all()
    for name in ("grpo", "rloo"):
        with pytest.raises(ValueError, match="not divisible by group_size 3"):
            ADVANTAGE_ESTIMATORS.get(name)(scores=torch.zeros(4), group_size=3, mask=mask)


def test_rloo_matches_loop():
    scores = torch.tensor([1.0, 4.0, -2.0, 0.5, 3.0, 3.0])
    lengths, T, n = [1, 2, 2, 2, 0, 2], 2, 3
    mask = mask_from_lengths(torch.tensor(lengths), T)
    adv, ret = ADVANTAGE_ESTIMATORS.get("rloo")(scores=scores, group_size=n, mask=mask)
    s = scores.tolist()
    for b in range(6):
        g = s[(b // n) * n:(b // n + 1) * n]
        a = s[b] - (sum(g) - s[b]) / (n - 1)
        for t in range(T):
            assert adv[b, t].item() == pytest.approx(a if t < lengths[b] else 0.0)
    with pytest.raises(ValueError, match="group_size >= 2"):
        ADVANTAGE_ESTIMATORS.get("rloo")(scores=scores, group_size=1, mask=mask)


def test_reinforce_pp_discounted_return_then_batch_whitened():
    lengths, T, gamma = [4, 2, 3], 4, 0.9
    torch.manual_seed(5)
    rewards = torch.randn(3, T, dtype=torch.float64)
    mask = mask_from_lengths(torch.tensor(lengths), T)
    adv, ret = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(token_rewards=rewards, mask=mask, gamma=gamma)
    ref = []
    for b, n in enumerate(lengths):
        r = rewards[b].tolist()
        ref.append([sum(gamma ** (k - t) * r[k] for k in range(t, n)) for t in range(n)])
    flat = [g for row in ref for g in row]
    mu, sd = statistics.mean(flat), statistics.stdev(flat)
    for b, n in enumerate(lengths):
        for t in range(T):
            assert ret[b, t].item() == pytest.approx(ref[b][t] if t < n else 0.0)
            assert adv[b, t].item() == pytest.approx((ref[b][t] - mu) / sd if t < n else 0.0, rel=1e-6)


def test_advantage_estimators_accept_one_kwargs_bundle():
    mask = mask_from_lengths(torch.tensor([2, 3, 1, 3]), 3)
    bundle = dict(token_rewards=torch.randn(4, 3), values=torch.randn(4, 3), scores=torch.randn(4),
                  mask=mask, gamma=1.0, lam=0.95, group_size=2)
    for name in ADVANTAGE_ESTIMATORS.names():
        adv, ret = ADVANTAGE_ESTIMATORS.get(name)(**bundle)
        assert adv.shape == ret.shape == (4, 3)
        assert (adv[mask == 0] == 0).all() and not adv.requires_grad
