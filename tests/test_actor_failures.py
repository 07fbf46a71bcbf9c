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


def _kill(group, rank=0):
    pid = group.get([group.actors[rank].identity.remote()])[0]["pid"]
    os.kill(pid, signal.SIGKILL)
    time.sleep(1.0)  # let Ray notice the process is gone
    return pid


def _metrics(run_dir) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def test_lost_actors_of_every_role_and_the_run_ends_as_an_uninterrupted_one(local_ray, tiny_policy, tmp_path):
    """One run meets a dead actor of every role (by process id, at the start of a step). Critic rank 0,
    killed before any checkpoint, takes the trainable groups back to the start; then rollout engine 0
    of 2, the reward and the reference actor are started again and their stage runs again (the engine
    serving the learner's weights, not the initial ones); learner rank 1 of 2, killed after the step-3
    checkpoint, takes the trainable groups back to step 3. The run finishes with the uninterrupted
    run's metrics."""
    from rlhf_ray.trainers.ppo import PPOTrainer

    class KillingTrainer(PPOTrainer):
        kills = {2: ("critic", 0), 3: ("rollout", 0), 4: ("reward", 0), 5: ("reference", 0), 6: ("learner", 1)}
        pids: dict[str, int] = {}
        lost: list[dict] = []

        def step(self, step):
            if step in self.kills:
                role, rank = self.kills.pop(step)
                self.pids[role] = _kill(getattr(self, role), rank)
                restarts = self.restarts
                metrics = super().step(step)  # the stage that meets an untrained role's dead actor runs again
                group = getattr(self, role)
                assert self.restarts == restarts + 1
                assert group.get([group.actors[rank].identity.remote()])[0]["pid"] != self.pids[role]
                assert all(math.isfinite(metrics[k]) for k in ("reward/mean", "kl/mean", "learner/policy_loss"))
                assert metrics["check/logprob_gap_mean"] < 1e-3  # a restarted engine serves the learner's weights
                return metrics
            return super().step(step)

        def restore_trainables(self, lost):
            self.lost.append(lost.ranks)  # the step raised TrainableLost: fit() goes back to a checkpoint
            return super().restore_trainables(lost)

    def overrides(run_dir):
        return tiny_overrides(tiny_policy, run_dir, "rollout.num_actors=2", "learner.num_actors=2",
                              "trainer.total_steps=7", "trainer.save_every=3", "trainer.save_hf=false",
                              "trainer.max_actor_restarts=5")

    straight, killed = tmp_path / "straight", tmp_path / "killed"
    for cls, run_dir in ((PPOTrainer, straight), (KillingTrainer, killed)):
        trainer = cls.from_config(load_config(overrides=overrides(run_dir)))
        try:
            trainer.fit()
            versions = trainer.rollout.get(trainer.rollout.call(Rollout.get_version))
        finally:
            trainer.shutdown()
    assert not trainer.kills and trainer.restarts == 5
    assert trainer.lost == [{"critic": [0]}, {"learner": [1]}]
    assert versions == [7, 7]
    want, got = _metrics(straight), _metrics(killed)
    assert [r["step"] for r in got] == list(range(8))  # each step logged once, in order
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
