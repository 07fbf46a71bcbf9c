"""Checkpoints: atomic writes, keep-last-k, crash during a save, and exact resume through real actors."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from conftest import assert_fails_before_actors, tiny_overrides
from rlhf_ray.config.loading import load_config
from rlhf_ray.runs.checkpoint import CheckpointError, CheckpointManager, resolve_resume, rng_state, set_rng_state, verify
from rlhf_ray.runs.rundir import RunDirError


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
    assert json.loads((good / "controller.json").read_text()) == {"step": 5, "run_id": None}
    with pytest.raises(FileNotFoundError, match="not a complete checkpoint"):
        resolve_resume(str(tmp), tmp_path)


def test_pruning_keeps_other_runs_and_the_new_checkpoint(tmp_path):
    """The lost-checkpoint bug: an old run's step_16 and step_24 beside a new run's step_4 with
    keep_last=2 deleted step_4 as it was committed (pruning by the combined list)."""
    old = CheckpointManager(tmp_path, keep_last=2, run_id="old")
    for step in (16, 24):
        _save(old, step)
    new = CheckpointManager(tmp_path, keep_last=2, run_id="new")
    assert _save(new, 4).is_dir()
    assert [p.name for p in new.complete()] == ["step_000004", "step_000016", "step_000024"]
    for step in (8, 12):
        _save(new, step)
    assert [p.name for p in new.owned()] == ["step_000008", "step_000012"]
    assert [p.name for p in old.owned()] == ["step_000016", "step_000024"]


def test_manifest_catches_a_changed_missing_or_added_file(tmp_path):
    good = _save(CheckpointManager(tmp_path, keep_last=2, run_id="r"), 3)
    verify(good)
    weights = good / "weights.bin"
    weights.write_bytes(b"y" * 3)  # same size, other bytes
    with pytest.raises(CheckpointError, match="file weights.bin changed since the save"):
        verify(good)
    weights.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="weights.bin is 1 bytes, 3 when saved"):
        verify(good)
    weights.unlink()
    with pytest.raises(CheckpointError, match="file weights.bin is missing"):
        verify(good)
    weights.write_bytes(b"x" * 3)
    verify(good)
    (good / "extra.pt").write_bytes(b"payload")
    with pytest.raises(CheckpointError, match="extra.pt is not in its MANIFEST.json"):
        verify(good)


def test_commit_fsyncs_every_file_before_the_rename(tmp_path, monkeypatch):
    import os

    import rlhf_ray.runs.checkpoint as ckpt

    synced, renamed = [], []
    real_fsync, real_rename = os.fsync, Path.rename
    monkeypatch.setattr(ckpt.os, "fsync", lambda fd: (synced.append(os.readlink(f"/proc/self/fd/{fd}")),
                                                      real_fsync(fd)))
    monkeypatch.setattr(Path, "rename", lambda self, target: (renamed.append(len(synced)), real_rename(self, target))[1])
    _save(CheckpointManager(tmp_path, keep_last=2, run_id="r"), 1)
    files = {Path(s).name for s in synced[:renamed[0]]}
    assert {"weights.bin", "controller.json", "MANIFEST.json", "COMPLETE"} <= files


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
    _refuses_what_does_not_fit(tiny_policy, tmp_path / "b", common)


def _refuses_what_does_not_fit(policy, run_dir, common):
    """After a resumed run: one run id throughout; a fresh run into its directory, a resume onto
    another layout or model, and a tampered checkpoint all stop before any actor starts."""
    import shutil

    record = json.loads((run_dir / "run.json").read_text())
    assert [s["resumed_from"] is not None for s in record["starts"]] == [False, True]
    assert {json.loads((p / "controller.json").read_text())["run_id"]
            for p in (run_dir / "checkpoints").iterdir()} == {record["id"]}

    def cfg(*extra, model=policy):
        return load_config(overrides=tiny_overrides(model, run_dir, *common, *extra))

    assert_fails_before_actors(cfg(), RunDirError, "holds another run's outputs")
    assert_fails_before_actors(cfg("trainer.resume=auto", "learner.num_actors=2"), CheckpointError,
                               "learner.num_actors: checkpoint 1, now 2")
    other = run_dir.parent / "other_model"
    shutil.copytree(policy, other)
    config = json.loads((other / "config.json").read_text())
    (other / "config.json").write_text(json.dumps({**config, "rope_theta": 1234.0}))
    assert_fails_before_actors(cfg("trainer.resume=auto", model=str(other)), CheckpointError,
                               "learner's model: its config or tokenizer files differ")
    state = max((run_dir / "checkpoints" / "step_000004" / "learner").rglob("*.pt"), key=lambda f: f.stat().st_size)
    data = bytearray(state.read_bytes())
    data[len(data) // 2] ^= 0xFF
    state.write_bytes(bytes(data))
    assert_fails_before_actors(cfg("trainer.resume=auto"), CheckpointError, "changed since the save")
