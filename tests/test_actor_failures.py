"""Actors killed mid-run (by process id): rollout, reward and reference come back and the step goes on;
a lost learner or critic rank takes its group back to the last checkpoint (or the start) and the run
then continues exactly as an uninterrupted one."""

from __future__ import annotations

import json
import math
import os
import signal
import time

import pytest

from conftest import tiny_overrides
from rlhf_ray.config.loading import load_config
from rlhf_ray.roles import Rollout
from rlhf_ray.trainers.controller import TrainableLost


def _kill(group, rank=0):
    pid = group.get([group.actors[rank].identity.remote()])[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)  # let Ray notice the process is gone
    return pid


def test_killed_actors_restart_and_the_run_goes_on(local_ray, tiny_policy, tmp_path):
    from rlhf_ray.trainers.ppo import PPOTrainer

    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path, "rollout.num_actors=2", "trainer.total_steps=5"))
    trainer = PPOTrainer.from_config(cfg)
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
        assert trainer.rollout.get(trainer.rollout.call(Rollout.get_version)) == [4, 4]
        _kill(trainer.learner)
        with pytest.raises(TrainableLost, match=r"learner ranks \[0\] died") as lost:
            trainer.step(5)  # a step cannot recover a learner: fit() goes back to a checkpoint
        assert lost.value.ranks == {"learner": [0]}
    finally:
        trainer.shutdown()


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lost_learner_and_critic_ranks_are_restored_from_checkpoints(local_ray, tiny_policy, tmp_path):
    """Critic rank 0 dies before any checkpoint (back to the start), learner rank 1 of 2 dies after
    the step-3 checkpoint (back to step 3): the run finishes with the uninterrupted run's metrics."""
    from rlhf_ray.trainers.ppo import PPOTrainer

    class KillingTrainer(PPOTrainer):
        kills = {2: ("critic", 0), 5: ("learner", 1)}

        def step(self, step):
            if step in self.kills:
                role, rank = self.kills.pop(step)
                _kill(getattr(self, role), rank)
            return super().step(step)

    def overrides(run_dir):
        return tiny_overrides(tiny_policy, run_dir, "learner.num_actors=2", "trainer.total_steps=6",
                              "trainer.save_every=3", "trainer.save_hf=false")

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for cls, run_dir in ((PPOTrainer, straight), (KillingTrainer, killed)):
        trainer = cls.from_config(load_config(overrides=overrides(run_dir)))
        try:
            trainer.fit()
        finally:
            trainer.shutdown()
    assert trainer.restarts == 2 and not trainer.kills
    want, got = _metrics(straight), _metrics(killed)
    assert [r["step"] for r in got] == list(range(7))  # each step logged once, in order
    for a, b in zip(want[1:], got[1:]):
        for key in ("reward/mean", "kl/mean", "learner/policy_loss", "critic/value_loss"):
            assert b[key] == pytest.approx(a[key], abs=1e-5), (a["step"], key)


def test_offline_loop_restores_a_lost_learner_rank_from_its_checkpoint(local_ray, tiny_policy, tmp_path):
    """The offline loop has the same recovery as every loop (Controller.fit): DPO with two learner
    ranks, rank 1 killed in step 3 after the step-2 checkpoint, finishes as the uninterrupted run."""
    from test_offline_integration import overrides, write_pairs

    from rlhf_ray.trainers.offline import OfflineTrainer

    class KillingTrainer(OfflineTrainer):
        kills = {3: 1}

        def step(self, step):
            if step in self.kills:
                _kill(self.learner, self.kills.pop(step))
            return super().step(step)

    data = write_pairs(tmp_path / "pairs.jsonl")
    runs = {}
    for cls, name in ((OfflineTrainer, "straight"), (KillingTrainer, "killed")):
        cfg = load_config(overrides=overrides(tiny_policy, tmp_path / name, data, "dpo", "offline.max_steps=4",
                                              "learner.num_actors=2", "learner.micro_batch_samples_per_actor=2",
                                              "learner.lr=5e-3", "trainer.save_every=2", "trainer.save_hf=false"))
        trainer = cls.from_config(cfg)
        try:
            trainer.fit()
        finally:
            trainer.shutdown()
        runs[name] = _metrics(tmp_path / name)
    assert trainer.restarts == 1 and not trainer.kills
    assert [r["step"] for r in runs["killed"]] == list(range(5))  # each step logged once
    for a, b in zip(runs["straight"][1:], runs["killed"][1:]):
        for key in ("learner/loss", "learner/margin"):
            assert b[key] == pytest.approx(a[key], rel=1e-4, abs=1e-6), (a["step"], key)
