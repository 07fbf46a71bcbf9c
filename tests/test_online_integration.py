"""GRPO, Dr. GRPO, GSPO, CISPO, RLOO, REINFORCE++, RAFT and best-of-n end to end through real Ray actors with tiny models.

The tiny policy answers no arithmetic question, so a rule reward would score every sample 0 and give
the critic-free methods no signal at all: these runs score with the tiny reward model instead."""

from __future__ import annotations

import json
import math

import pytest

from conftest import tiny_overrides
from rlhf_ray.config.loading import load_config
from rlhf_ray.roles import Rollout
from test_ppo_integration import LOGPROB_GAP_TOL, _max_gap, _metrics, _probe


def _started(ray, run_id: str) -> set[str]:
    """Roles with a live actor of this run (actors are named '<run id>/<role>-<rank>')."""
    names = [a["name"] for a in ray.util.list_named_actors(all_namespaces=True)]
    return {n.split("/", 1)[1].rsplit("-", 1)[0] for n in names if n.startswith(run_id + "/")}


def _check_synced(trainer, before, version):
    """Every engine serves the learner's new weights at the learner's version."""
    after, engines = _probe(trainer)
    assert trainer.rollout.get(trainer.rollout.call(Rollout.get_version)) == [version] * trainer.rollout.size
    assert _max_gap(before, after) > 1e-3, "the learner's weights never changed"
    for engine in engines:
        assert _max_gap(engine, after) < LOGPROB_GAP_TOL


def fit_two_synced(ray, trainer, roles: set[str]) -> dict:
    """Fits a run of two steps (rounds) and shuts it down: its actors were those of ``roles``, and after it
    every engine serves the learner's weights at version 2."""
    try:
        assert _started(ray, trainer.run_id) == roles
        before, _ = _probe(trainer)
        summary = trainer.fit()
        _check_synced(trainer, before, 2)
    finally:
        trainer.shutdown()
    return summary


def _overrides(policy, reward_model, run_dir, *extra):
    return tiny_overrides(policy, run_dir, "reward.kind=model", f"reward.model_path={reward_model}",
                          "reward.micro_batch_samples_per_actor=4", *extra)


@pytest.mark.parametrize("algorithm, extra", [
    ("grpo", ["ppo.kl.placement=loss", "ppo.kl.estimator=k3", "ppo.kl.coef=0.04"]),
    ("rloo", ["rollout.backend=hf", "ppo.whiten_advantages=false"]),
    ("reinforce_pp", ["rollout.backend=hf"]),
    ("gspo", ["rollout.backend=hf"]),  # the clip range and aggregation: the row's
    ("cispo", ["rollout.backend=hf"]),
    ("dr_grpo", []),
])
def test_critic_free_two_steps(local_ray, tiny_policy, tiny_reward_model, tmp_path, algorithm, extra, capsys):
    from rlhf_ray.trainers.ppo import PPOTrainer

    if "rollout.backend=hf" not in extra:
        pytest.importorskip("vllm")
    cfg = load_config(overrides=_overrides(tiny_policy, tiny_reward_model, tmp_path, f"algorithm={algorithm}",
                                           "ppo.prompts_per_step_global=2", "ppo.samples_per_prompt=4", *extra))
    trainer = PPOTrainer.from_config(cfg)
    assert trainer.critic is None
    # the start says which clip range it trains with: the row's for gspo and cispo
    source = f"{algorithm}'s default" if algorithm in ("gspo", "cispo") else "default"
    assert f"[algorithm] {algorithm}: ppo.clip_eps={cfg.ppo.clip_eps} ({source})" in capsys.readouterr().out
    assert cfg.ppo.clip_eps == {"gspo": 3e-4, "cispo": 1.0}.get(algorithm, 0.2)
    summary = fit_two_synced(local_ray, trainer, {"rollout", "learner", "reference", "reward"})
    rows = [r for r in _metrics(tmp_path) if r["step"] > 0]  # step 0: the evaluation before training
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        for key in ("reward/mean", "kl/mean", "learner/policy_loss", "learner/clipfrac", "learner/entropy",
                    "advantages/std", "groups/zero_signal_frac", "groups/best_mean", "time/generate", "time/update",
                    "time/sync", "sync/bytes"):
            assert key in r and math.isfinite(r[key]), key
        assert not any(k.startswith("critic/") for k in r)
        assert r["check/logprob_gap_mean"] < LOGPROB_GAP_TOL
        assert r["groups/zero_signal_frac"] < 1, "a reward model's scores should differ within a group"
        assert ("learner/kl_loss" in r) == (algorithm == "grpo")
    assert 0 <= summary["eval"][2]["eval/accuracy"] <= 1


def test_raft_two_rounds_raise_the_selected_logprob(local_ray, tiny_policy, tmp_path):
    from rlhf_ray.trainers.raft import RaftTrainer

    pytest.importorskip("vllm")
    cfg = load_config(overrides=tiny_overrides(
        tiny_policy, tmp_path, "algorithm=raft", "raft.rounds=2", "raft.prompts_per_round=4",
        "raft.samples_per_prompt=4", "raft.sft_epochs=2", "offline.batch_samples_global=4", "trainer.eval_every=1"))
    trainer = RaftTrainer.from_config(cfg)
    try:
        assert _started(local_ray, trainer.run_id) == {"rollout", "learner", "reward"}
        before, _ = _probe(trainer)
        summary = trainer.fit()
        _check_synced(trainer, before, 2)
    finally:
        trainer.shutdown()
    rows = _metrics(tmp_path)[1:]  # row 0 is the evaluation before training
    assert [r["step"] for r in rows] == [1, 2]
    for r in rows:
        assert r["raft/selected"] == 4  # the best of each prompt's 4 samples
        assert r["raft/selected_logprob_after"] > r["raft/selected_logprob_before"] + 0.05
        assert math.isfinite(r["learner/sft_loss"]) and "eval/accuracy" in r
    assert set(summary["eval"]) == {0, 1, 2}


def test_best_of_n_command_writes_the_best_response(local_ray, tiny_policy, tiny_reward_model, tmp_path, capsys):
    from rlhf_ray.cli import main

    pytest.importorskip("vllm")
    overrides = _overrides(tiny_policy, tiny_reward_model, tmp_path, "raft.samples_per_prompt=4",
                           "rollout.max_new_tokens=6", "rollout.temperature=1.5")
    assert main(["best-of-n", *overrides]) == 0
    out = capsys.readouterr().out
    assert "best-of-4 mean reward:" in out and "on 8 eval prompts" in out
    rows = [json.loads(line) for line in (tmp_path / "best_of_n.jsonl").read_text().splitlines()]
    assert len(rows) == 8
    for r in rows:
        assert len(r["scores"]) == 4 and r["score"] == max(r["scores"]) >= r["scores"][0]
        assert set(r) == {"prompt", "answer", "response", "score", "scores"} and r["prompt"].startswith("What is")
    summary = json.loads((tmp_path / "best_of_n_summary.json").read_text())
    assert summary["best_mean"] > summary["first_mean"], "n=4 continuous scores: the best beats the first somewhere"
    assert summary["best_mean"] == pytest.approx(sum(r["score"] for r in rows) / 8, abs=1e-5)
