"""Statistics of model-based evaluation: win rates from reward-model scores or an LLM judge, the
judge's position bias, length-controlled win rates and bootstrap confidence intervals.

Pure tensor code: the evaluation controller collects the scores and verdicts and calls these. The
formulas and their derivations are in docs/methods/evaluation.md.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch import Tensor

# Soft labels are clamped to [PREFERENCE_CLAMP, 1 - PREFERENCE_CLAMP] before the length-controlled
# fit, so all-wins / all-losses / perfectly length-separated data still have a finite optimum.
PREFERENCE_CLAMP = 1e-3
RIDGE = 1e-6  # per item: keeps the Newton system well conditioned; moves the optimum by ~1e-6
BOOTSTRAP_CHUNK = 1 << 22  # indices drawn per chunk of resamples (bounds memory for big sets)


def _check_probabilities(name: str, p: Tensor) -> None:
    if p.dim() != 1 or p.numel() == 0:
        raise ValueError(f"{name} must be a non-empty 1-D tensor, got shape {tuple(p.shape)}")
    if not bool(torch.isfinite(p).all()) or bool(((p < 0) | (p > 1)).any()):
        raise ValueError(f"{name} must hold finite values in [0, 1]")


def _check_same_shape(name: str, x: Tensor, reference: Tensor) -> None:
    if x.shape != reference.shape:
        raise ValueError(f"{name} has shape {tuple(x.shape)}, expected {tuple(reference.shape)}")


def pairwise_from_scores(policy_scores: Tensor, baseline_scores: Tensor) -> Tensor:
    """Per-item preference from two reward-model scores: 1 if policy > baseline, 0 if lower, 0.5 if
    equal (the reward-model win rate is its mean)."""
    _check_same_shape("baseline_scores", baseline_scores, policy_scores)
    return (torch.sign(policy_scores.double() - baseline_scores.double()) + 1.0) / 2.0


def order_corrected(policy_first: Tensor, policy_second: Tensor) -> dict[str, float]:
    """Win rate of an LLM judge that saw every (policy, baseline) pair in both orders, and its
    position bias (Zheng et al. 2023, "Judging LLM-as-a-Judge with MT-Bench and Chatbot Arena").

    a_i = P(policy better) with the policy's answer in position 1, b_i the same in position 2:
    win_rate       = mean_i (a_i + b_i) / 2                    (ties, p = 0.5, count 1/2)
    inconsistency  = mean_i [sgn(a_i - 1/2) != sgn(b_i - 1/2)] (hard verdicts name different answers:
                     the same position both times, or a tie in one order only)
    first_position = mean_i (a_i + (1 - b_i)) / 2              (share of the 2n judgments, counted in
                     probability mass, that prefer the answer shown first; 1/2 = no position bias)
    """
    _check_probabilities("policy_first", policy_first)
    _check_probabilities("policy_second", policy_second)
    _check_same_shape("policy_second", policy_second, policy_first)
    a, b = policy_first.double(), policy_second.double()
    disagree = torch.sign(a - 0.5) != torch.sign(b - 0.5)
    return {
        "win_rate": ((a + b) / 2).mean().item(),
        "inconsistency": disagree.double().mean().item(),
        "first_position": ((a + 1.0 - b) / 2).mean().item(),
        "n": float(a.numel()),
    }


def _soft_cross_entropy(w: Tensor, X: Tensor, y: Tensor, ridge: Tensor) -> Tensor:
    z = X @ w
    return (torch.nn.functional.softplus(z) - y * z).mean() + (ridge * w) @ w / 2


def _difficulty_groups(instructions, n: int) -> tuple[Tensor, int]:
    """Item -> column of its intercept: one per instruction judged more than once, and one shared by the
    instructions judged once (whose difficulty cannot be told from their single verdict); and how many
    instructions have their own."""
    keys = instructions.tolist() if isinstance(instructions, Tensor) else list(instructions)
    if len(keys) != n:
        raise ValueError(f"instructions has {len(keys)} entries, expected {n}")
    ids = {k: i for i, k in enumerate(dict.fromkeys(keys))}
    inverse = torch.tensor([ids[k] for k in keys], dtype=torch.long)
    counts = torch.bincount(inverse)
    repeated = counts[inverse] > 1
    return torch.unique(torch.where(repeated, inverse + 1, 0), return_inverse=True)[1], int((counts > 1).sum())


def _fit(X: Tensor, y: Tensor, ridge: Tensor, max_iter: int) -> Tensor:
    """argmin_w of _soft_cross_entropy by damped Newton (IRLS), float64. The dense system has a row per
    intercept: fine for the thousands of instructions of an evaluation set."""
    w = torch.zeros(X.shape[1], dtype=torch.float64)
    loss = _soft_cross_entropy(w, X, y, ridge)
    for _ in range(max_iter):
        s = torch.sigmoid(X @ w)
        grad = X.T @ (s - y) / len(y) + ridge * w
        hess = (X.T * (s * (1 - s))) @ X / len(y) + torch.diag(ridge)
        step = torch.linalg.solve(hess, grad)
        t = 1.0
        while True:  # halve the Newton step until the objective does not increase
            candidate = w - t * step
            new_loss = _soft_cross_entropy(candidate, X, y, ridge)
            if new_loss <= loss or t < 1e-10:
                break
            t /= 2
        w, loss = candidate, new_loss
        if (t * step).abs().max().item() < 1e-12:
            break
    return w


def length_controlled_win_rate(preferences: Tensor, length_diff: Tensor, instructions=None,
                               max_iter: int = 100) -> dict[str, float]:
    """Length-controlled win rate of AlpacaEval 2 (Dubois et al. 2024, "Length-Controlled
    AlpacaEval: A Simple Way to Debias Automatic Evaluators").

    P(policy preferred | item j) = σ(a_g(j) + φ · tanh(Δ_j / sd(Δ))),  lc_win_rate = mean_j σ(a_g(j))

    Δ_j = len(policy_j) - len(baseline_j) in characters, as rlhf_ray.trainers.compare measures it (and
    AlpacaEval: str.len()), sd the sample standard deviation over items (sd = 0 or one item: φ = 0).
    a_g is an intercept per group g of items, and lc_win_rate the mean over items of the prediction at
    zero length difference: AlpacaEval's mean_i σ(θ + γ·d_i), with γ·d_i its instruction-difficulty term.

    ``instructions`` (one key per item, e.g. a prompt id) names the instruction each judgement is of.
    An instruction judged more than once (several baselines, several samples of the policy) gets its
    own intercept a_i = θ + γ·d_i, fitted from its verdicts as one value (AlpacaEval takes d_i from its
    leaderboard's models and fits γ); the instructions judged once share one intercept. With no
    instruction repeated (or ``instructions=None``) that is one a = θ and lc_win_rate = σ(θ): the
    difficulty term is not identifiable then and is left out, which biases the figure when difficulty
    varies, most when it goes with the length difference (docs/methods/evaluation.md). theta
    is reported as mean_j a_g(j) (θ with the item-weighted difficulty centred at 0).

    The fit minimises the mean soft-label cross-entropy
    -mean_j[y_j log σ(z_j) + (1 - y_j) log(1 - σ(z_j))] + mean_j 1e-6/2 (a_g(j)² + φ²),
    y_j = clamp(p_j, 1e-3, 1 - 1e-3): the clamp (not the ridge) is what keeps every intercept finite for
    all-wins, all-losses or length-separated data. Damped Newton (IRLS) in float64.
    (If the verdicts follow sign(Δ) exactly, the unclamped MLE does not exist and the intercepts are set
    by the few items of nearly equal length: the LC rate is then noisy, whatever the regulariser.) With
    few hard 0/1 verdicts per instruction, per-instruction intercepts overstate |φ| (the incidental-
    parameter bias of fixed-effect logits: about 2× with two verdicts each); see docs/methods/evaluation.md.
    A bootstrap over such data should resample instructions, not items (a drawn duplicate is no repeat).
    ``difficulty_terms``: how many instructions got their own intercept (0: the fit without the term).
    """
    _check_probabilities("preferences", preferences)
    _check_same_shape("length_diff", length_diff, preferences)
    if not bool(torch.isfinite(length_diff).all()):
        raise ValueError("length_diff must be finite")
    p = preferences.double()
    delta = length_diff.double()
    n = p.numel()
    groups, repeated = (torch.zeros(n, dtype=torch.long), 0) if instructions is None else \
        _difficulty_groups(instructions, n)
    sd = delta.std().item() if n > 1 else 0.0
    columns = [torch.nn.functional.one_hot(groups).double()] + ([torch.tanh(delta / sd)[:, None]] if sd > 0 else [])
    X = torch.cat(columns, dim=1)
    n_groups = int(groups.max()) + 1
    # The ridge is per item, so an intercept of few items is not pulled to 0 harder than one of many.
    ridge = RIDGE * torch.cat([torch.bincount(groups) / n, torch.ones(X.shape[1] - n_groups)]).double()
    w = _fit(X, p.clamp(PREFERENCE_CLAMP, 1.0 - PREFERENCE_CLAMP), ridge, max_iter)
    intercepts = w[:n_groups][groups]
    phi = w[n_groups].item() if X.shape[1] > n_groups else 0.0
    return {"lc_win_rate": torch.sigmoid(intercepts).mean().item(), "win_rate": p.mean().item(),
            "theta": intercepts.mean().item(), "phi": phi, "length_effect": phi,
            "difficulty_terms": float(repeated)}


def _resamples(n_items: int, samples: int, seed: int) -> Iterator[Tensor]:
    """Chunks of bootstrap resamples [k, n_items] of item indices, drawn with replacement from a
    generator seeded with ``seed``; the same (n_items, samples, seed) always gives the same ones."""
    if n_items < 1 or samples < 1:
        raise ValueError(f"need n_items >= 1 and samples >= 1, got {n_items}, {samples}")
    gen = torch.Generator().manual_seed(seed)
    rows = max(1, BOOTSTRAP_CHUNK // n_items)
    for start in range(0, samples, rows):
        yield torch.randint(0, n_items, (min(rows, samples - start), n_items), generator=gen)


def _percentile_interval(stats: Tensor, level: float) -> tuple[float, float]:
    if not 0 < level < 1:
        raise ValueError(f"level must be in (0, 1), got {level}")
    q = torch.tensor([(1 - level) / 2, (1 + level) / 2], dtype=torch.float64)
    lo, hi = torch.quantile(stats.double(), q).tolist()
    return lo, hi


def bootstrap_interval(statistic: Callable[[Tensor], float], n_items: int, samples: int = 1000,
                       level: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (Efron & Tibshirani 1993, "An Introduction to the Bootstrap").

    Draws ``samples`` resamples of the item indices 0..n_items-1 with replacement, evaluates
    ``statistic(indices)`` on each (the callable indexes its own data), and returns the
    (1 - level)/2 and (1 + level)/2 quantiles (linear interpolation) of those values.
    """
    _percentile_interval(torch.zeros(1), level)  # validate before the expensive part
    stats = [float(statistic(idx)) for chunk in _resamples(n_items, samples, seed) for idx in chunk]
    return _percentile_interval(torch.tensor(stats, dtype=torch.float64), level)


def bootstrap_mean_interval(values: Tensor, samples: int = 1000, level: float = 0.95,
                            seed: int = 0) -> tuple[float, float]:
    """bootstrap_interval of the plain mean (e.g. a reward-model win rate over per-item
    preferences), vectorised; same resamples, hence the same interval, for the same seed."""
    if values.dim() != 1:
        raise ValueError(f"values must be a 1-D tensor, got shape {tuple(values.shape)}")
    v = values.double()
    _percentile_interval(torch.zeros(1), level)
    means = torch.cat([v[chunk].mean(dim=1) for chunk in _resamples(v.numel(), samples, seed)])
    return _percentile_interval(means, level)
