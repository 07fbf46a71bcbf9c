"""Model-based evaluation statistics vs plain-python loops, closed forms, grid searches and
seeded simulations."""
import math
import statistics
from collections import Counter, defaultdict

import pytest
import torch

from rlhf_ray.algos.judging import (
    bootstrap_interval,
    bootstrap_mean_interval,
    length_controlled_win_rate,
    order_corrected,
    pairwise_from_scores,
)

pytestmark = pytest.mark.unit


def gen(seed):
    return torch.Generator().manual_seed(seed)


# ---------------------------------------------------------------- pairwise_from_scores


def test_pairwise_from_scores_win_loss_tie():
    assert pairwise_from_scores(torch.tensor([2.0, -1.0, 0.5]), torch.tensor([1.0, 3.0, 0.5])).tolist() == [1.0, 0.0, 0.5]


# ---------------------------------------------------------------- order_corrected


def verdict(p):
    return "policy" if p > 0.5 else "baseline" if p < 0.5 else "tie"


def order_corrected_loop(first, second):
    n = len(first)
    win = sum((a + b) / 2 for a, b in zip(first, second)) / n
    inconsistent = sum(verdict(a) != verdict(b) for a, b in zip(first, second)) / n
    # policy shown first: "position 1 preferred" has mass a; policy shown second: the baseline is
    # in position 1 and is preferred with mass 1 - b
    first_pos = sum(a + (1 - b) for a, b in zip(first, second)) / (2 * n)
    return win, inconsistent, first_pos


def test_order_corrected_judge_that_always_prefers_position_one():
    n = 7
    out = order_corrected(torch.ones(n), torch.zeros(n))
    assert out == {"win_rate": 0.5, "inconsistency": 1.0, "first_position": 1.0, "n": 7.0}


def test_order_corrected_consistent_judge_has_no_inconsistency():
    hard = torch.tensor([1.0, 0.0, 0.5, 1.0, 0.5, 0.0])
    out = order_corrected(hard, hard)
    assert out["inconsistency"] == 0.0
    assert out["win_rate"] == pytest.approx(3.0 / 6) and out["first_position"] == 0.5
    # soft probabilities on the same side of 1/2 in both orders are consistent too
    out = order_corrected(torch.tensor([0.9, 0.2, 0.5]), torch.tensor([0.6, 0.4, 0.5]))
    assert out["inconsistency"] == 0.0
    assert out["first_position"] == pytest.approx((0.9 + 0.4 + 0.2 + 0.6 + 0.5 + 0.5) / 6)


def test_order_corrected_random_verdicts_are_inconsistent_half_the_time():
    g = gen(0)
    n = 20000
    first = (torch.rand(n, generator=g) < 0.5).float()
    second = (torch.rand(n, generator=g) < 0.5).float()
    out = order_corrected(first, second)
    assert abs(out["inconsistency"] - 0.5) < 0.02
    assert abs(out["first_position"] - 0.5) < 0.02 and abs(out["win_rate"] - 0.5) < 0.02


def test_order_corrected_matches_plain_loop():
    g = gen(1)
    n = 300
    soft = torch.rand(2, n, generator=g)
    hard = torch.randint(0, 3, (2, n), generator=g) / 2.0  # 0, 0.5 (tie) or 1
    pick = torch.rand(2, n, generator=g) < 0.5
    first, second = torch.where(pick, hard, soft)
    win, inconsistent, first_pos = order_corrected_loop(first.tolist(), second.tolist())
    out = order_corrected(first, second)
    assert out["win_rate"] == pytest.approx(win, abs=1e-12)
    assert out["inconsistency"] == pytest.approx(inconsistent, abs=1e-12)
    assert out["first_position"] == pytest.approx(first_pos, abs=1e-12)
    assert out["n"] == float(n) and 0.2 < inconsistent < 0.8


@pytest.mark.parametrize("first, second, name", [
    (torch.ones(3), torch.ones(4), "policy_second"),
    (torch.ones(2, 3), torch.ones(2, 3), "policy_first"),
    (torch.ones(0), torch.ones(0), "policy_first"),
    (torch.tensor([0.5, 1.2]), torch.ones(2), "policy_first"),
    (torch.ones(2), torch.tensor([0.5, float("nan")]), "policy_second"),
    (torch.ones(2), torch.tensor([-0.1, 0.5]), "policy_second"),
])
def test_order_corrected_rejects_bad_inputs(first, second, name):
    with pytest.raises(ValueError, match=name):
        order_corrected(first, second)


# ---------------------------------------------------------------- length_controlled_win_rate


def test_lc_win_rate_removes_a_pure_length_preference():
    # The judge's probability depends on the length difference only (0.5 at equal length), but
    # the policy's answers are longer on ~80% of items: the raw win rate is inflated, LC is not.
    g = gen(2)
    n = 4000
    delta = (torch.randn(n, generator=g, dtype=torch.float64) + 0.8416) * 150  # P(delta > 0) = 0.8
    x = torch.tanh(delta / delta.std())
    prefs = (torch.rand(n, generator=g, dtype=torch.float64) < torch.sigmoid(6 * x)).double()
    out = length_controlled_win_rate(prefs, delta)
    assert 0.75 < out["win_rate"] < 0.85
    assert abs(out["lc_win_rate"] - 0.5) < 0.08
    assert out["phi"] == out["length_effect"] and 4.5 < out["phi"] < 7.5


def test_lc_win_rate_equals_raw_when_preferences_ignore_length():
    g = gen(3)
    n = 4000
    delta = torch.randn(n, generator=g) * 200 + 100  # policy mostly longer, irrelevant to the judge
    prefs = (torch.rand(n, generator=g) < 0.65).float()
    out = length_controlled_win_rate(prefs, delta)
    assert out["win_rate"] == pytest.approx(prefs.mean().item())
    assert abs(out["lc_win_rate"] - out["win_rate"]) < 0.03 and abs(out["phi"]) < 0.3


def mean_log_likelihood(theta, phi, x, y):
    """Mean soft-label log-likelihood on a grid: theta, phi [G] against items x, y [n]."""
    z = theta[:, None] + phi[:, None] * x[None, :]
    s = torch.sigmoid(z)
    return (y * torch.log(s) + (1 - y) * torch.log1p(-s)).mean(dim=1)


def test_lc_fit_maximises_the_likelihood_grid_search():
    g = gen(4)
    n = 200
    delta = torch.randn(n, generator=g, dtype=torch.float64) * 120 + 40
    sd = statistics.stdev(delta.tolist())
    x = torch.tensor([math.tanh(d / sd) for d in delta.tolist()], dtype=torch.float64)
    p_true = torch.sigmoid(0.4 + 1.2 * x)
    hard = (torch.rand(n, generator=g, dtype=torch.float64) < p_true).double()
    prefs = torch.where(torch.arange(n) % 2 == 0, hard, p_true)  # hard verdicts and soft ones
    y = prefs.clamp(1e-3, 1 - 1e-3)
    out = length_controlled_win_rate(prefs, delta)

    def grid_argmax(theta_c, phi_c, half_width, step):
        k = round(half_width / step)
        offsets = torch.arange(-k, k + 1, dtype=torch.float64) * step
        theta, phi = torch.meshgrid(theta_c + offsets, phi_c + offsets, indexing="ij")
        ll = mean_log_likelihood(theta.reshape(-1), phi.reshape(-1), x, y)
        best = ll.argmax()
        return theta.reshape(-1)[best].item(), phi.reshape(-1)[best].item(), ll[best].item()

    theta, phi, _ = grid_argmax(0.0, 0.0, 4.0, 0.05)
    theta, phi, best_ll = grid_argmax(theta, phi, 0.06, 0.001)
    assert out["theta"] == pytest.approx(theta, abs=2e-3) and out["phi"] == pytest.approx(phi, abs=2e-3)
    fitted_ll = mean_log_likelihood(torch.tensor([out["theta"]]), torch.tensor([out["phi"]]), x, y).item()
    assert fitted_ll >= best_ll - 1e-9
    assert out["lc_win_rate"] == pytest.approx(1 / (1 + math.exp(-out["theta"])), abs=1e-12)


def test_lc_all_wins_is_finite_and_near_one_and_constant_length_drops_phi():
    delta = torch.randn(500, generator=gen(5)) * 100
    wins = length_controlled_win_rate(torch.ones(500), delta)
    assert math.isfinite(wins["theta"]) and wins["lc_win_rate"] > 0.99 and wins["win_rate"] == 1.0
    losses = length_controlled_win_rate(torch.zeros(500), delta)
    assert math.isfinite(losses["theta"]) and losses["lc_win_rate"] < 0.01
    # sd(delta) == 0: no length term; the fit is the (clamped) mean preference
    prefs = torch.tensor([1.0, 0.0, 1.0, 0.5])
    same = length_controlled_win_rate(prefs, torch.full((4,), 30.0))
    clamped_mean = (0.999 + 0.001 + 0.999 + 0.5) / 4
    assert same["phi"] == 0.0 and same["lc_win_rate"] == pytest.approx(clamped_mean, abs=1e-5)


# ---------------------------------------------------------------- instruction difficulty


def difficulty_data(instructions, repeats, seed, hard_share):
    """Judgements of ``instructions`` instructions, ``repeats`` each, from AlpacaEval's GLM
    P = σ(θ + φ·tanh(Δ/sd) + d_i) with θ = 0.3, φ = 1 and difficulty d_i ~ N(0, 1.5²) that correlates
    with the length difference (corr ≈ 0.6: the policy writes more where it does well). A share of the
    verdicts is drawn hard (0/1), the rest are the probabilities themselves."""
    g = gen(seed)
    d = torch.randn(instructions, generator=g, dtype=torch.float64) * 1.5
    ids = torch.arange(instructions).repeat_interleave(repeats)
    noise = torch.randn(len(ids), generator=g, dtype=torch.float64)
    delta = 150 * (0.6 * d[ids] / 1.5 + 0.8 * noise) + 40
    p = torch.sigmoid(0.3 + torch.tanh(delta / delta.std()) + d[ids])
    hard = (torch.rand(len(ids), generator=g, dtype=torch.float64) < p).double()
    pick = torch.rand(len(ids), generator=g) < hard_share
    return torch.where(pick, hard, p), delta, ids, torch.sigmoid(0.3 + d[ids]).mean().item()


def alpaca_eval_reference(prefs, delta, ids):
    """AlpacaEval's length-controlled win rate written out: P_j = σ(θ + φ·x_j + γ·d_i(j)), x = tanh(Δ/sd),
    LC = mean over items of σ(θ + γ·d_i), with θ + γ·d_i one free value per instruction judged more than
    once (those judged once share one). Fitted by profile likelihood, not Newton: for a given φ each
    instruction's value solves its own score equation Σ_j (σ(a + φ·x_j) - y_j) = 0 by bisection, and φ
    maximises the profile log-likelihood by golden-section search (the profile of a concave function is
    concave). Labels clamped to [1e-3, 1 - 1e-3] as documented; no ridge."""
    y = [min(max(v, 1e-3), 1 - 1e-3) for v in prefs.tolist()]
    sd = statistics.stdev(delta.tolist())
    x = [math.tanh(v / sd) for v in delta.tolist()]
    counts = Counter(ids.tolist())
    members = defaultdict(list)
    for j, k in enumerate(ids.tolist()):
        members[k if counts[k] > 1 else "judged once"].append(j)

    def sigmoid(z):
        return 1 / (1 + math.exp(-z))

    def intercept(items, phi):
        lo, hi, target = -30.0, 30.0, sum(y[j] for j in items)
        for _ in range(64):
            mid = (lo + hi) / 2
            lo, hi = (mid, hi) if sum(sigmoid(mid + phi * x[j]) for j in items) < target else (lo, mid)
        return (lo + hi) / 2

    def profile(phi):
        a = {k: intercept(items, phi) for k, items in members.items()}
        ll = 0.0
        for k, items in members.items():
            for j in items:
                z = a[k] + phi * x[j]
                ll += y[j] * math.log(sigmoid(z)) + (1 - y[j]) * math.log(sigmoid(-z))
        return ll, a

    lo, hi, r = -10.0, 10.0, (math.sqrt(5) - 1) / 2
    for _ in range(60):
        m1, m2 = hi - r * (hi - lo), lo + r * (hi - lo)
        lo, hi = (lo, m2) if profile(m1)[0] > profile(m2)[0] else (m1, hi)
    phi = (lo + hi) / 2
    a = profile(phi)[1]
    lc = sum(sigmoid(a[k]) * len(items) for k, items in members.items()) / len(y)
    return lc, phi


def test_lc_with_repeated_instructions_matches_a_reference_fit_of_alpaca_evals_glm():
    prefs, delta, ids, _ = difficulty_data(40, 4, seed=10, hard_share=0.5)
    # and 20 instructions judged once, which share one value
    once, once_delta, _, _ = difficulty_data(20, 1, seed=11, hard_share=0.5)
    prefs, delta = torch.cat([prefs, once]), torch.cat([delta, once_delta])
    ids = torch.cat([ids, torch.arange(100, 120)])
    out = length_controlled_win_rate(prefs, delta, ids)
    lc, phi = alpaca_eval_reference(prefs, delta, ids)
    assert out["difficulty_terms"] == 40.0
    # (the reference has no ridge; ours moves φ by ~1e-4 here)
    assert out["phi"] == pytest.approx(phi, abs=2e-4) and out["lc_win_rate"] == pytest.approx(lc, abs=1e-6)
    # the difficulty term matters on these data: the fit without it reports another figure
    assert abs(length_controlled_win_rate(prefs, delta)["lc_win_rate"] - lc) > 0.01


def test_lc_difficulty_term_recovers_the_truth_where_the_pooled_fit_is_biased():
    # Verdicts that are the GLM's own probabilities: the per-instruction fit recovers θ, φ and every
    # d_i, so its LC is AlpacaEval's mean σ(θ + d_i); without the term, the difficulty that goes with
    # longer answers is taken for a length effect (φ inflated) and LC comes out low.
    prefs, delta, ids, truth = difficulty_data(200, 4, seed=12, hard_share=0.0)
    with_term = length_controlled_win_rate(prefs, delta, ids)
    pooled = length_controlled_win_rate(prefs, delta)
    assert with_term["lc_win_rate"] == pytest.approx(truth, abs=1e-4) and with_term["phi"] == pytest.approx(1, abs=1e-3)
    assert pooled["lc_win_rate"] < truth - 0.02 and pooled["phi"] > 1.3


def test_lc_without_repeated_instructions_is_the_pooled_fit():
    prefs, delta, _, _ = difficulty_data(60, 1, seed=13, hard_share=0.5)
    keys = [f"prompt {i}" for i in range(60)]  # any hashable key, e.g. the prompt text
    assert length_controlled_win_rate(prefs, delta, keys) == length_controlled_win_rate(prefs, delta)
    assert length_controlled_win_rate(prefs, delta)["difficulty_terms"] == 0.0
    with pytest.raises(ValueError, match="instructions has 59 entries"):
        length_controlled_win_rate(prefs, delta, keys[1:])


def test_lc_rejects_bad_inputs():
    with pytest.raises(ValueError, match="preferences"):
        length_controlled_win_rate(torch.tensor([0.5, 2.0]), torch.zeros(2))
    with pytest.raises(ValueError, match="length_diff"):
        length_controlled_win_rate(torch.ones(3), torch.zeros(2))
    with pytest.raises(ValueError, match="length_diff"):
        length_controlled_win_rate(torch.ones(2), torch.tensor([1.0, float("inf")]))


# ---------------------------------------------------------------- bootstrap


def percentile(sorted_values, q):
    """Linear-interpolation quantile, written out."""
    pos = q * (len(sorted_values) - 1)
    lo = math.floor(pos)
    hi = min(lo + 1, len(sorted_values) - 1)
    return sorted_values[lo] + (pos - lo) * (sorted_values[hi] - sorted_values[lo])


def test_bootstrap_interval_is_the_percentile_of_seeded_resamples():
    values = torch.randn(50, generator=gen(6), dtype=torch.float64)
    median = lambda idx: values[idx].median().item()  # noqa: E731
    lo, hi = bootstrap_interval(median, 50, samples=200, level=0.9, seed=11)
    resamples = torch.randint(0, 50, (200, 50), generator=gen(11))
    stats = sorted(values[row].median().item() for row in resamples)
    assert (lo, hi) == pytest.approx((percentile(stats, 0.05), percentile(stats, 0.95)), abs=1e-12)


def test_bootstrap_mean_interval_agrees_with_generic_one():
    values = (torch.rand(80, generator=gen(7)) < 0.4).double()
    generic = bootstrap_interval(lambda idx: values[idx].mean().item(), 80, samples=500, seed=3)
    assert bootstrap_mean_interval(values, samples=500, seed=3) == pytest.approx(generic, abs=1e-12)


def test_bootstrap_mean_interval_covers_the_truth_about_95_percent():
    g = gen(8)
    covered = 0
    for k in range(300):
        outcomes = (torch.rand(100, generator=g) < 0.3).double()
        lo, hi = bootstrap_mean_interval(outcomes, seed=k)
        covered += lo <= 0.3 <= hi
    assert 0.90 <= covered / 300 <= 0.99


def test_bootstrap_deterministic_contains_estimate_and_shrinks_with_n():
    g = gen(9)
    small = (torch.rand(100, generator=g) < 0.3).double()
    large = (torch.rand(2000, generator=g) < 0.3).double()
    a = bootstrap_mean_interval(small, seed=5)
    assert a == bootstrap_mean_interval(small, seed=5)
    continuous = torch.rand(100, generator=g)  # 0/1 data can land on the same quantiles by chance
    assert bootstrap_mean_interval(continuous, seed=5) != bootstrap_mean_interval(continuous, seed=6)
    assert a[0] <= small.mean().item() <= a[1]
    b = bootstrap_mean_interval(large, seed=5)
    assert b[0] <= large.mean().item() <= b[1]
    assert (b[1] - b[0]) < 0.4 * (a[1] - a[0])  # width ~ 1/sqrt(n): ratio ~ sqrt(100/2000) = 0.22


def test_bootstrap_rejects_bad_level_and_sizes():
    with pytest.raises(ValueError, match="level"):
        bootstrap_mean_interval(torch.ones(5), level=1.0)
    with pytest.raises(ValueError, match="n_items"):
        bootstrap_interval(lambda idx: 0.0, 0)
