"""Checkpoints and exact resume of the offline loop (DPO, reward-model training) and of RAFT, through
real Ray actors with tiny models: a run cut in two and resumed must continue as the straight run did."""

from __future__ import annotations

import json

import pytest

from conftest import tiny_overrides
from rlhf_ray.config.loading import load_config
from test_offline_integration import fit, metrics_rows, overrides, write_pairs

STEP_KEYS = ("learner/loss", "learner/margin", "learner/accuracy", "learner/grad_norm")


def _dpo(policy, run_dir, data, steps, *extra):
    from rlhf_ray.trainers.offline import OfflineTrainer

    # 16 pairs, 4 a step: the 4 steps are one pass in a seeded order, so a sampler restarted from
    # the top would feed steps 3-4 the pairs of steps 1-2 again.
    cfg = load_config(overrides=overrides(policy, run_dir, data, "dpo", f"offline.max_steps={steps}",
                                          "offline.eval_every=2", "learner.lr=5e-3", "trainer.seed=5", *extra))
    return fit(OfflineTrainer.from_config(cfg))


@pytest.fixture(scope="module")
def dpo_runs(local_ray, tiny_policy, tmp_path_factory):
    """A: 4 steps straight, a checkpoint every step (keep 2). B: 2 steps, then a new trainer resumes."""
    root = tmp_path_factory.mktemp("dpo_resume")
    data = write_pairs(root / "pairs.jsonl")
    a, b = root / "a", root / "b"
    straight = _dpo(tiny_policy, a, data, 4, "trainer.save_every=1", "trainer.keep_last=2")
    _dpo(tiny_policy, b, data, 2, "trainer.save_every=2", "trainer.save_hf=false")
    with (b / "metrics.jsonl").open("a") as f:  # as if B crashed after logging step 3, before saving it
        f.write(json.dumps({"step": 3, "learner/loss": 99.0}) + "\n")
    resumed = _dpo(tiny_policy, b, data, 4, "trainer.save_every=2", "trainer.resume=auto")
    return a, b, straight, resumed


def test_dpo_resume_matches_straight_run(dpo_runs):
    from safetensors.torch import load_file

    a, b, straight, resumed = dpo_runs
    rows_a, rows_b = metrics_rows(a), metrics_rows(b)
    assert [r["step"] for r in rows_b] == [0, 1, 2, 3, 4]  # step 0 not logged again, the crashed step 3 dropped
    for ra, rb in zip(rows_a[1:], rows_b[1:]):
        for key in STEP_KEYS:
            if ra["step"] == 1 and key == "learner/accuracy":
                # policy = reference at step 1: every margin is float noise (~1e-7, from how the
                # reference's micro-batches were cut), so which side of 0 it falls on is arbitrary
                continue
            assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), (ra["step"], key)
    assert rows_a[4]["learner/loss"] != pytest.approx(rows_a[1]["learner/loss"], abs=1e-3)  # it did train
    # The evaluations before the cut come back from the checkpoint, the one after matches.
    assert set(resumed["eval"]) == set(straight["eval"]) == {0, 2, 4}
    for step in (0, 2, 4):
        for key in ("eval/loss", "eval/margin", "eval/accuracy"):
            assert resumed["eval"][step][key] == pytest.approx(straight["eval"][step][key], abs=1e-5), (step, key)
    wa = load_file(str(a / "checkpoints" / "step_000004" / "policy_hf" / "model.safetensors"))
    wb = load_file(str(b / "checkpoints" / "step_000004" / "policy_hf" / "model.safetensors"))
    assert wa.keys() == wb.keys()
    # Not bit-equal: run B's first part precomputed reference log-probs for its own 2-step plan, so
    # they were batched with other rows than in A (float sums differ at ~1e-7), and this test's
    # learning rate (5e-3) amplifies that to ~4e-5 in 4 steps. A resume that lost the optimiser or
    # weights would be off by ~1e-2.
    assert max((wa[k] - wb[k]).abs().max().item() for k in wa) < 5e-4


def test_dpo_checkpoint_holds_states_and_keeps_last(dpo_runs):
    a, b, _, _ = dpo_runs
    ckpts = a / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == ["step_000003", "step_000004"]  # 1 and 2 pruned, no .tmp
    for step in (3, 4):
        folder = ckpts / f"step_{step:06d}"
        assert (folder / "COMPLETE").is_file() and (folder / "config.yaml").is_file()
        state = json.loads((folder / "controller.json").read_text())
        assert state["step"] == step and state["sampler"] == {"epoch": 0, "position": 4 * step}
        assert set(state["rng"]) == {"python", "numpy", "torch"}
        assert sorted(state["eval"]) == (["0", "2"] if step == 3 else ["0", "2", "4"])
        rank = json.loads((folder / "learner" / "rank0.json").read_text())
        assert rank["updates"] == step  # one optimiser step per training step
        assert (folder / "learner" / "state").is_dir()
        assert (folder / "policy_hf" / "model.safetensors").is_file() and (folder / "policy_hf" / "tokenizer.json").is_file()
    # B saved at 2 without the HF export (trainer.save_hf=false), its resumed half at 4 with it.
    assert sorted(p.name for p in (b / "checkpoints").iterdir()) == ["step_000002", "step_000004"]
    assert not (b / "checkpoints" / "step_000002" / "policy_hf").exists()
    assert (b / "checkpoints" / "step_000004" / "policy_hf").is_dir()


def test_reward_model_resume_restores_the_reward_group(local_ray, tiny_policy, tmp_path):
    """Reward-model training checkpoints the reward actors (reward/, reward_hf/); a resume loads them."""
    from rlhf_ray.trainers.reward_model import RewardModelTrainer

    data = write_pairs(tmp_path / "pairs.jsonl", n=8)

    def trainer(*extra):
        return RewardModelTrainer.from_config(load_config(overrides=overrides(tiny_policy, tmp_path / "run", data, "reward_model",
                                                                  *extra)))

    first = fit(trainer())
    folder = tmp_path / "run" / "checkpoints" / "step_000002"
    assert (folder / "reward" / "rank0.json").is_file() and (folder / "reward_hf" / "config.json").is_file()
    t = trainer("offline.max_steps=3", "trainer.resume=auto")
    try:
        start, history = t.resume()
        assert start == 2 and set(history) == {0, 2}
        loss = t.eval_metrics(t.eval)["loss"]  # the restored weights score the held-out pairs as before
        assert loss == pytest.approx(first["eval"][2]["eval/loss"], abs=1e-5)
        assert loss != pytest.approx(first["eval"][0]["eval/loss"], abs=1e-3)
    finally:
        t.shutdown()


def _raft(policy, reward_model, run_dir, rounds, *extra):
    from rlhf_ray.trainers.raft import RaftTrainer

    cfg = load_config(overrides=tiny_overrides(
        policy, run_dir, "algorithm=raft", f"raft.rounds={rounds}", "raft.prompts_per_round=4",
        "raft.samples_per_prompt=2", "offline.batch_samples_global=4", "rollout.backend=hf", "reward.kind=model",
        f"reward.model_path={reward_model}", "reward.micro_batch_samples_per_actor=4", "trainer.eval_every=1",
        "trainer.save_hf=false", "learner.lr=5e-3", *extra))
    trainer = RaftTrainer.from_config(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.shutdown()


def test_raft_resume_continues_at_the_next_round(local_ray, tiny_policy, tiny_reward_model, tmp_path):
    straight = _raft(tiny_policy, tiny_reward_model, tmp_path / "a", 2)
    _raft(tiny_policy, tiny_reward_model, tmp_path / "b", 1)
    state = json.loads((tmp_path / "b" / "checkpoints" / "step_000001" / "controller.json").read_text())
    assert state["step"] == 1 and state["version"] == 1 and state["sampler"] == {"epoch": 0, "position": 4}
    resumed = _raft(tiny_policy, tiny_reward_model, tmp_path / "b", 2, "trainer.resume=auto")
    rows_a, rows_b = metrics_rows(tmp_path / "a"), metrics_rows(tmp_path / "b")
    assert [r["step"] for r in rows_b] == [0, 1, 2]  # round 1 not run again
    ra, rb = rows_a[2], rows_b[2]
    for key in ("reward/mean", "raft/selected_score_mean", "raft/selected_logprob_before", "learner/sft_loss",
                "raft/selected_logprob_after", "response/length_mean", "eval/accuracy"):
        assert rb[key] == pytest.approx(ra[key], rel=1e-5, abs=1e-6), key
    assert set(resumed["eval"]) == set(straight["eval"]) == {0, 1, 2}
