"""Actors killed mid-run (by process id): rollout, reward and reference come back and the step goes on;
a lost learner rank stops the run with the way back (resume from the last checkpoint)."""

from __future__ import annotations

import math
import os
import signal
import time

import pytest

from conftest import tiny_overrides
from rlhf_ray.config import load_config


def _kill(group, rank=0):
    pid = group.get([group.actors[rank].identity.remote()])[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)  # let Ray notice the process is gone
    return pid


def test_killed_actors_restart_and_the_run_goes_on(local_ray, tiny_policy, tmp_path):
    from rlhf_ray.trainers.ppo import PPOTrainer

    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path, "rollout.num_actors=2", "trainer.total_steps=5"))
    trainer = PPOTrainer(cfg)
    try:
        trainer.step(1)
        for step, role in enumerate(("rollout", "reward", "reference"), start=2):
            group = getattr(trainer, role)
            old_pid = _kill(group)
            metrics = trainer.step(step)  # the stage that meets the dead actor restarts it and runs again
            assert trainer.restarts == step - 1
            assert group.get([group.actors[0].identity.remote()])[0]["pid"] != old_pid
            assert all(math.isfinite(metrics[k]) for k in ("reward/mean", "kl/mean", "learner/policy_loss"))
            # a restarted engine serves the learner's weights, not the initial ones
            assert metrics["check/logprob_gap_mean"] < 1e-3
        assert trainer.rollout.get(trainer.rollout.call("get_version")) == [4, 4]
        _kill(trainer.learner)
        with pytest.raises(RuntimeError, match=r"learner ranks \[0\] died.*trainer.resume=auto"):
            trainer.step(5)
    finally:
        trainer.shutdown()
