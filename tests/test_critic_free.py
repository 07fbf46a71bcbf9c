"""Critic-free advantages per algorithm, the controller's group layout, RAFT/best-of-n selection.

Pure tensor code, no actors: every expected value below is computed by hand or by plain loops."""

from __future__ import annotations

import math

import pytest
import torch

from rlhf_ray.algos.masked import mask_from_lengths
from rlhf_ray.config import ConfigError
from rlhf_ray.config.loading import load_config
from rlhf_ray.data.prompts import PromptSampler
from rlhf_ray.trainers.best_of_n import best_rows
from rlhf_ray.trainers.estimate import estimate_advantages, group_metrics
from rlhf_ray.trainers.inputs import PromptInputs, repeat_prompts
from rlhf_ray.trainers.raft import select_samples, whole_steps

pytestmark = pytest.mark.unit


def _cfg(algorithm, *extra, n=3):
    return load_config(overrides=[f"algorithm={algorithm}", "ppo.prompts_per_step_global=4",
                                  f"ppo.samples_per_prompt={n}", f"ppo.minibatch_samples_global={4 * n}",
                                  "learner.micro_batch_samples_per_actor=1", "critic.micro_batch_samples_per_actor=1",
                                  *extra])


def _controller_rows(prompts, n, seed=3):
    """The rows the controller's step samples: the run's inputs alone, no actor started."""
    inputs = PromptInputs(cfg=None, model_paths={}, tokenizer=None, sampler=PromptSampler(size=50, seed=seed),
                          train_set=None, eval_set=None)
    return inputs.sample_rows(prompts, n)


def test_controller_layout_is_what_group_estimators_read():
    rows = _controller_rows(prompts=4, n=3)
    prompts = PromptSampler(size=50, seed=3).next(4)
    assert rows == [p for p in prompts for _ in range(3)]  # each prompt's samples are consecutive
    # Scores depend on the prompt (prompt 0 all equal) and on the sample; GRPO through the estimator
    # must equal a z-score computed by grouping rows on their prompt id, not on their position.
    seen: dict[int, int] = {}
    scores = []
    for r in rows:
        j = seen[r] = seen.get(r, -1) + 1  # the sample's number within its prompt, whatever its row
        scores.append(2.0 if r == rows[0] else float((r + j * j) % 5))
    scores = torch.tensor(scores)
    mask = mask_from_lengths(torch.tensor([2, 3, 1] * 4), 3)
    adv, _ = estimate_advantages(_cfg("grpo", "ppo.kl.placement=loss"), scores, torch.zeros(12, 3), torch.zeros(12), mask, 0.1)
    for r in set(rows):
        members = [i for i, x in enumerate(rows) if x == r]
        s = scores[members]
        expected = (s - s.mean()) / (s.std() + 1e-6)
        got = torch.stack([adv[i, 0] for i in members])
        assert torch.allclose(got, expected, atol=1e-5), r
    assert all((adv[i] == 0).all() for i, r in enumerate(rows) if r == rows[0]), "all-equal group: no signal"
    assert (adv * (1 - mask)).abs().sum() == 0


def test_repeat_prompts():
    assert repeat_prompts([5, 2, 9], 2) == [5, 5, 2, 2, 9, 9]


def _inputs(scores, lengths=(3, 3, 2, 1, 3, 2), T=3):
    mask = mask_from_lengths(torch.tensor(lengths), T)
    token_rewards = torch.zeros(len(scores), T)
    for i, L in enumerate(lengths):
        token_rewards[i, L - 1] = scores[i]
    return torch.tensor(scores), token_rewards, mask


def test_grpo_group_zscore_and_dr_grpo():
    scores, tr, mask = _inputs([1.0, 0.0, 0.0, 1.0, 1.0, 1.0])
    adv, ret = estimate_advantages(_cfg("grpo", "ppo.kl.placement=loss"), scores, tr, torch.zeros(6), mask, 0.5)
    std = torch.tensor([1.0, 0.0, 0.0]).std()
    assert adv[0, 0] == pytest.approx(float((1 - 1 / 3) / (std + 1e-6)), rel=1e-5)
    assert adv[1, 0] == pytest.approx(float(-(1 / 3) / (std + 1e-6)), rel=1e-5)
    assert (adv[3:] == 0).all(), "an all-equal group teaches nothing"
    assert torch.equal(adv, ret)
    dr, _ = estimate_advantages(_cfg("grpo", "ppo.kl.placement=loss", "ppo.whiten_advantages=false"),
                                scores, tr, torch.zeros(6), mask, 0.5)
    assert dr[0, 0] == pytest.approx(2 / 3) and dr[2, 0] == pytest.approx(-1 / 3)


def test_grpo_with_kl_in_the_reward_penalises_whole_sequences():
    scores, tr, mask = _inputs([1.0, 1.0, 1.0, 0.0, 0.0, 0.0])
    seq_kl = torch.tensor([0.0, 2.0, 0.0, 0.0, 0.0, 0.0])
    adv, _ = estimate_advantages(_cfg("grpo", "ppo.kl.placement=reward", "ppo.whiten_advantages=false"),
                                 scores, tr, seq_kl, mask, 0.5)
    # s' = s - β·KL = [1, 0, 1]: the drifting sample is now below its group's mean
    assert adv[1, 0] == pytest.approx(-2 / 3) and adv[0, 0] == pytest.approx(1 / 3)
    assert (adv[3:] == 0).all()


def test_rloo_leave_one_out_and_scale_only_normalisation():
    scores, tr, mask = _inputs([3.0, 0.0, 0.0, 2.0, 2.0, 2.0])
    cfg = _cfg("rloo", "ppo.kl.placement=loss", "ppo.whiten_advantages=false")
    adv, _ = estimate_advantages(cfg, scores, tr, torch.zeros(6), mask, 0.1)
    assert [float(adv[i, 0]) for i in range(3)] == pytest.approx([3.0, -1.5, -1.5])
    assert (adv[3:] == 0).all()
    scaled, _ = estimate_advantages(_cfg("rloo", "ppo.kl.placement=loss"), scores, tr, torch.zeros(6), mask, 0.1)
    valid = [adv[i, t] for i in range(6) for t in range(3) if mask[i, t]]
    sd = torch.stack(valid).std()
    assert torch.allclose(scaled, adv / sd, atol=1e-5)
    assert (scaled[3:] == 0).all(), "scaling must not re-centre: zero-signal groups stay at zero"


def test_reinforce_pp_whitens_returns_unless_disabled():
    scores, tr, mask = _inputs([1.0, 0.0, 0.0, 1.0, 0.5, 0.0])
    tr = tr - 0.1 * mask  # a per-token KL penalty already folded in
    adv, ret = estimate_advantages(_cfg("reinforce_pp"), scores, tr, torch.zeros(6), mask, 0.1)
    assert ret[0, 0] == pytest.approx(1.0 - 0.3) and ret[0, 2] == pytest.approx(1.0 - 0.1)
    valid = torch.stack([adv[i, t] for i in range(6) for t in range(3) if mask[i, t]])
    assert float(valid.mean()) == pytest.approx(0.0, abs=1e-6) and float(valid.std()) == pytest.approx(1.0, abs=1e-4)
    plain, _ = estimate_advantages(_cfg("reinforce_pp", "ppo.whiten_advantages=false"), scores, tr, torch.zeros(6), mask, 0.1)
    assert torch.equal(plain, ret)


def test_ppo_needs_values():
    scores, tr, mask = _inputs([1.0] * 6)
    with pytest.raises(ValueError, match="needs the critic's values"):
        estimate_advantages(_cfg("ppo"), scores, tr, torch.zeros(6), mask, 0.1)


def test_group_metrics():
    m = group_metrics(torch.tensor([1.0, 0.0, 0.0, 1.0, 1.0, 1.0, 0.0, 0.0, 0.0]), 3)
    assert m["groups/zero_signal_frac"] == pytest.approx(2 / 3)
    assert m["groups/best_mean"] == pytest.approx(2 / 3) and m["groups/worst_mean"] == pytest.approx(1 / 3)
    assert m["groups/score_std_mean"] == pytest.approx(math.sqrt(1 / 3) / 3)
    assert group_metrics(torch.tensor([1.0, 0.0]), 1) == {}


def _raft(*extra):
    return load_config(overrides=["algorithm=raft", *extra]).raft


def test_select_best_per_prompt_with_and_without_threshold():
    scores = torch.tensor([0.2, 0.9, 0.9, 0.0, 0.0, 0.0, 0.5, 0.1, 0.4])
    assert select_samples(scores, 3, _raft()) == [1, 3, 6]  # ties: the first best
    assert select_samples(scores, 3, _raft("raft.threshold=0.5")) == [1, 6]


def test_select_above_threshold_capped_per_prompt():
    scores = torch.tensor([0.2, 0.9, 0.7, 0.0, 0.0, 0.0, 0.5, 0.6, 0.8])
    raft = _raft("raft.selection=threshold", "raft.threshold=0.5")
    assert select_samples(scores, 3, raft) == [1, 2, 6, 7, 8]
    capped = _raft("raft.selection=threshold", "raft.threshold=0.5", "raft.max_per_prompt=2")
    assert select_samples(scores, 3, capped) == [1, 2, 7, 8]


def test_whole_steps_drops_a_partial_step_reproducibly():
    rows = list(range(0, 30, 3))  # 10 rows
    kept = whole_steps(rows, 4, seed=1)
    assert len(kept) == 8 and set(kept) <= set(rows) and kept == sorted(kept) == whole_steps(rows, 4, seed=1)
    assert whole_steps(rows, 5, seed=1) == rows and whole_steps(rows[:3], 4, seed=1) == []


def test_threshold_selection_needs_a_threshold():
    with pytest.raises(ConfigError, match="raft.selection=threshold needs raft.threshold"):
        load_config(overrides=["raft.selection=threshold"])


def test_best_rows_first_on_ties():
    assert best_rows(torch.tensor([0.0, 1.0, 1.0, 2.0, 0.0, 0.0]), 3) == [1, 3]
