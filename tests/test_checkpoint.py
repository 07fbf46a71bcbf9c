"""Checkpoints: atomic writes, keep-last-k, crash during a save, and exact resume through real actors."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_overrides
from rlhf_ray.checkpoint import CheckpointManager, resolve_resume, rng_state, set_rng_state
from rlhf_ray.config import load_config


def _save(manager, step, state=None):
    tmp = manager.begin(step)
    (tmp / "weights.bin").write_bytes(b"x" * step)
    return manager.commit(tmp, state or {"step": step})


def test_keep_last_and_latest(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    for step in (1, 2, 3):
        _save(m, step)
    assert [p.name for p in m.complete()] == ["step_000002", "step_000003"]
    assert resolve_resume("auto", tmp_path).name == "step_000003"


def test_crash_during_save_keeps_previous_checkpoint(tmp_path):
    m = CheckpointManager(tmp_path, keep_last=2)
    good = _save(m, 5)
    tmp = m.begin(6)  # a save that dies before commit: weights half written, no marker
    (tmp / "weights.bin").write_bytes(b"half")
    assert m.latest() == good == resolve_resume("auto", tmp_path)
    assert json.loads((good / "controller.json").read_text()) == {"step": 5}
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp), tmp_path)


def test_rng_state_round_trips_through_json():
    import random

    import numpy as np
    import torch

    state = json.loads(json.dumps(rng_state()))
    a = (random.random(), np.random.rand(), torch.rand(1).item())
    set_rng_state(state)
    assert (random.random(), np.random.rand(), torch.rand(1).item()) == a


def _run(policy, run_dir, steps, *extra):
    from rlhf_ray.trainers.ppo import PPOTrainer

    cfg = load_config(overrides=tiny_overrides(policy, run_dir, f"trainer.total_steps={steps}", *extra))
    trainer = PPOTrainer.from_config(cfg)
    try:
        trainer.fit()
    finally:
        trainer.shutdown()
    return [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_resume_matches_uninterrupted_run(local_ray, tiny_policy, tmp_path):
    common = ("trainer.save_every=2", "trainer.save_hf=false", "trainer.seed=3", "learner.lr=1e-2")
    straight = _run(tiny_policy, tmp_path / "a", 4, *common)
    _run(tiny_policy, tmp_path / "b", 2, *common)
    resumed = _run(tiny_policy, tmp_path / "b", 4, *common, "trainer.resume=auto")
    assert [r["step"] for r in resumed] == [0, 1, 2, 3, 4]  # no step logged twice
    for a, b in zip(straight[3:], resumed[3:]):  # steps 3 and 4 ran after the resume
        for key in ("reward/mean", "kl/mean", "learner/policy_loss", "critic/value_loss", "response/length_mean"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
    assert resumed[4]["check/logprob_gap_mean"] < 1e-3  # the engines got the restored weights
    ckpts = sorted(p.name for p in (tmp_path / "b" / "checkpoints").iterdir())
    assert ckpts == ["step_000002", "step_000004"]
