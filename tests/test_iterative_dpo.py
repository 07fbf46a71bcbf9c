"""Iterative DPO end to end on real actors (tiny models): rounds of the policy's own scored samples →
pairs → DPO on the learner against the reference → weight sync."""

from __future__ import annotations

import json
import math

import pytest

from conftest import tiny_overrides
from rlhf_ray.config.loading import load_config
from test_online_integration import fit_two_synced
from test_ppo_integration import _metrics


def test_two_rounds_of_dpo_on_own_samples(local_ray, tiny_policy, tiny_reward_model, tmp_path):
    from rlhf_ray.trainers.iterative import IterativeDPOTrainer

    overrides = [o for o in tiny_overrides(tiny_policy, tmp_path, "algorithm=iterative_dpo") if o != "trainer.total_steps=2"]
    cfg = load_config(overrides=overrides + [
        "iterative.rounds=2", "iterative.prompts_per_round=4", "synthesize.samples_per_prompt=4",
        "offline.batch_samples_global=4", "rollout.backend=hf",  # engines as vLLM's: test_online_integration
        "reward.kind=model", f"reward.model_path={tiny_reward_model}",
        "reward.micro_batch_samples_per_actor=4", "trainer.eval_every=1",
        "trainer.eval.baseline=reference", "trainer.eval.every=1", "trainer.eval.bootstrap_samples=200"])
    summary = fit_two_synced(local_ray, IterativeDPOTrainer.from_config(cfg), {"rollout", "learner", "reference", "reward"})
    rows = _metrics(tmp_path)[1:]
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        # A reward model's scores never tie here: every prompt gives a pair, one optimiser step of 4.
        assert r["pairs/count"] == 4 and r["pairs/per_prompt"] == 1
        assert math.isfinite(r["learner/loss"]) and "eval/accuracy" in r
    # Round 1's only step starts from the reference itself: DPO's loss is exactly -log σ(0) = log 2.
    assert rows[0]["learner/loss"] == pytest.approx(math.log(2), abs=1e-4)
    assert set(summary["eval"]) == {0, 1, 2}
    # Judged against the reference by round (its reward model judging): at step 0 the policy is the
    # reference, its answers are the baseline's, every prompt a tie.
    first = _metrics(tmp_path)[0]
    assert first["eval/compare/win_rate"] == 0.5 and first["eval/compare/policy_longer"] == 0
    for step in (0, 1, 2):
        assert (tmp_path / f"compare_step{step:05d}.json").is_file()
    assert all(0 <= r["eval/compare/win_rate"] <= 1 and "eval/compare/lc_win_rate" in r for r in rows)
    # Every round's pairs were written as they were made, as text with their scores.
    pairs = [json.loads(line) for line in (tmp_path / "iterative_pairs.jsonl").read_text().splitlines()]
    assert [p["round"] for p in pairs] == [1] * 4 + [2] * 4
    assert all(p["chosen_score"] > p["rejected_score"] and isinstance(p["chosen"], str) for p in pairs)
