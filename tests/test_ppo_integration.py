"""PPO end to end through real Ray actors of all five roles, with tiny random models."""

from __future__ import annotations

import json
import math

import pytest

from conftest import tiny_overrides
from rlhf_ray.config.loading import load_config
from rlhf_ray.models.loading import load_causal_lm, load_tokenizer
from rlhf_ray.models.tokenizer_match import tokenizer_differences
from rlhf_ray.roles import PolicyLearner, Rollout
from rlhf_ray.sync.manifest import BucketManifest

# vLLM's CPU kernels and transformers agree to ~5e-7 on fp32; 1e-3 leaves room for summation order
# yet a stale or half-applied weight sync moves log-probs by far more.
LOGPROB_GAP_TOL = 1e-3


def _probe(trainer):
    """Fixed (prompt, response) pairs scored by the learner and by every rollout engine."""
    from rlhf_ray.data.batch import build_batch

    prompts = trainer.train_set.ids[:3]
    responses = [trainer.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("12", "7 + 5 = 12", "no")]
    batch = build_batch(prompts, responses, trainer.tokenizer.pad_token_id)
    learner = trainer.learner.gather_cat(trainer.learner.map_batch(PolicyLearner.compute_logprobs, batch))
    learner = [row[:len(r)].tolist() for row, r in zip(learner, responses)]
    engines = trainer.rollout.get(trainer.rollout.call(Rollout.score_logprobs, prompts, responses))
    return learner, engines


def _max_gap(a, b):
    return max(abs(x - y) for ra, rb in zip(a, b) for x, y in zip(ra, rb))


def _fit(cfg):
    """Trains, then checks every engine serves the learner's weights at the learner's version."""
    from rlhf_ray.trainers.ppo import PPOTrainer

    trainer = PPOTrainer.from_config(cfg)
    try:
        before, _ = _probe(trainer)
        summary = trainer.fit()
        after, engines = _probe(trainer)
        versions = trainer.rollout.get(trainer.rollout.call(Rollout.get_version))
        assert trainer.version == cfg.trainer.total_steps
        assert versions == [trainer.version] * cfg.rollout.num_actors
        assert _max_gap(before, after) > 1e-3, "the learner's weights never changed"
        for engine in engines:
            assert _max_gap(engine, after) < LOGPROB_GAP_TOL
        return summary
    finally:
        trainer.shutdown()


def _metrics(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def _check_metrics(rows, steps):
    assert rows[0]["step"] == 0 and "eval/accuracy" in rows[0]  # the evaluation before training
    rows = rows[1:]
    assert [r["step"] for r in rows] == list(range(1, steps + 1))
    for r in rows:
        for key in ("reward/mean", "kl/mean", "learner/policy_loss", "critic/value_loss", "learner/clipfrac",
                    "learner/entropy", "response/length_mean", "throughput/samples_per_s", "time/generate",
                    "time/score", "time/update", "time/sync"):
            assert key in r and math.isfinite(r[key]), key
        assert r["check/logprob_gap_mean"] < LOGPROB_GAP_TOL
    assert "eval/accuracy" in rows[-1]


def test_ppo_vllm_two_steps(local_ray, tiny_policy, tmp_path):
    """Through the collective transport (a gloo broadcast from the learner into both engines' vLLM
    workers), in buckets of a few layers, every bucket's checksum verified by the engines. The
    object-store transport is what the other runs use."""
    pytest.importorskip("vllm")
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path, "rollout.num_actors=2", "sync.transport=collective",
                                               "sync.verify=true", "sync.bucket_mb=0.05"))
    summary = _fit(cfg)
    rows = _metrics(tmp_path)
    _check_metrics(rows, 2)
    assert all(r["sync/buckets"] > 2 for r in rows[1:])
    assert set(summary["eval"]) == {0, 2} and 0 <= summary["eval"][2]["eval/accuracy"] <= 1
    assert (tmp_path / "config.yaml").is_file() and (tmp_path / "eval_step00002.jsonl").is_file()
    # vLLM's engine chatter went to the engines' own logs in the run directory (rlhf_ray.runs.logs)
    engine_logs = sorted((tmp_path / "logs").glob("*/rollout-*.log"))
    assert len(engine_logs) == 2 and all("Reloading weights inplace" in f.read_text() for f in engine_logs)


def test_ppo_zero3_two_learners_hf_rollout(local_ray, tiny_policy, tmp_path):
    cfg = load_config(overrides=tiny_overrides(
        tiny_policy, tmp_path, "rollout.backend=hf", "learner.num_actors=2", "learner.zero_stage=3",
        "critic.num_actors=2", "critic.zero_stage=2", "learner.micro_batch_samples_per_actor=2",
        "critic.micro_batch_samples_per_actor=2", "ppo.kl.placement=loss", "ppo.kl.estimator=k3"))
    _fit(cfg)
    _check_metrics(_metrics(tmp_path), 2)


def test_local_ray_listens_on_loopback_only(local_ray):
    @local_ray.remote
    def where():
        import ray

        return ray.util.get_node_ip_address()

    assert local_ray.get(where.remote()) == "127.0.0.1"
    assert {n["NodeManagerAddress"] for n in local_ray.nodes()} == {"127.0.0.1"}


def test_async_rollout_is_one_step_off_policy_and_corrected(local_ray, tiny_policy, tmp_path):
    """Step n+1 is generated while step n trains: from step 2 on the batch comes from weights one
    update old (staleness 1), the engine/learner log-prob gap opens, and the truncated IS weights
    move off 1. Step 1 has nothing to overlap and equals the synchronous run's step 1 exactly."""
    pytest.importorskip("vllm")
    from rlhf_ray.trainers.ppo import PPOTrainer

    runs = {}
    for mode in ("false", "true"):
        run_dir = tmp_path / mode
        cfg = load_config(overrides=tiny_overrides(tiny_policy, run_dir, f"ppo.async_rollout={mode}",
                                                   "trainer.total_steps=3"))
        trainer = PPOTrainer.from_config(cfg)
        try:
            trainer.fit()
            assert trainer.rollout.get(trainer.rollout.call(Rollout.get_version)) == [3]
        finally:
            trainer.shutdown()
        runs[mode] = _metrics(run_dir)[1:]
    sync, off = runs["false"], runs["true"]
    assert [r["offpolicy/staleness"] for r in sync] == [0, 0, 0]
    assert [r["offpolicy/staleness"] for r in off] == [0, 1, 1]
    for key in ("reward/mean", "learner/policy_loss", "critic/value_loss"):
        assert off[0][key] == pytest.approx(sync[0][key], abs=1e-6), key
    assert all(r["check/logprob_gap_mean"] < LOGPROB_GAP_TOL for r in sync)
    assert all(r["check/logprob_gap_mean"] > 10 * LOGPROB_GAP_TOL for r in off[1:])
    assert all(abs(r["learner/is_weight_mean"] - 1) < 1e-3 for r in sync)
    assert all(abs(r["learner/is_weight_mean"] - 1) > 1e-3 for r in off[1:])


def test_logprob_gap_alarm_names_the_step_when_an_engine_serves_other_weights(local_ray, tiny_policy, tmp_path, capsys):
    """An engine whose weights differ from the learner's (a sync that silently never arrived, or
    arrived corrupted) is caught at the next step, before the update: a warning naming the step and
    the gap, or (ppo.logprob_gap_action=stop) an error."""
    import torch
    from transformers import AutoModelForCausalLM

    from rlhf_ray.trainers.ppo import LogprobGapError, PPOTrainer

    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path, "algorithm=grpo", "rollout.backend=hf",
                                               "trainer.total_steps=4"))
    trainer = PPOTrainer.from_config(cfg)
    try:
        healthy = trainer.step(1)
        assert healthy["check/logprob_gap_mean"] < LOGPROB_GAP_TOL
        assert "[alarm]" not in capsys.readouterr().out
        torch.manual_seed(0)
        model = AutoModelForCausalLM.from_pretrained(tiny_policy)
        noisy = [(name, p.detach() + 0.05 * torch.randn_like(p)) for name, p in model.named_parameters()]
        def serve_noisy():  # one bucket at the learner's version: the engines pass it as a sync
            manifest = BucketManifest.build(trainer.version, 0, True, noisy)
            trainer.rollout.get(trainer.rollout.call(Rollout.load_weights, manifest, noisy))

        serve_noisy()
        broken = trainer.step(2)  # warn (the default): the step goes on, the alarm names it
        assert broken["check/logprob_gap_mean"] > cfg.ppo.logprob_gap_warn
        assert "[alarm] step 2: rollout/learner log-prob gap" in capsys.readouterr().out
        serve_noisy()
        trainer.cfg.ppo.logprob_gap_action = "stop"
        with pytest.raises(LogprobGapError, match=r"step 3: rollout/learner log-prob gap [\d.]+ > ppo.logprob_gap_warn=0.05"):
            trainer.step(3)
    finally:
        trainer.shutdown()


def test_ppo_gemma3_vllm_with_reward_model(local_ray, tiny_gemma_policy, tiny_gemma_reward_model, tmp_path):
    """Any HF causal LM, on a second architecture and tokenizer: policy, reference, critic, reward model
    and the vLLM engine all on the tiny Gemma 3 (GQA, q/k norms, scaled embeddings, tied head, sliding
    window layers whose 8-token window every prompt overruns), its own ids and special tokens."""
    pytest.importorskip("vllm")
    cfg = load_config(overrides=tiny_overrides(tiny_gemma_policy, tmp_path, "reward.kind=model",
                                               f"reward.model_path={tiny_gemma_reward_model}", "sync.verify=true",
                                               "sync.bucket_mb=0.05", "model.sequence_packing=on",
                                               "trainer.save_every=2"))
    _fit(cfg)
    rows = _metrics(tmp_path)
    _check_metrics(rows, 2)
    assert all(r["sync/buckets"] > 2 for r in rows[1:])
    # The exported policy is a Gemma 3 folder again: tied head, and the tokenizer it was trained with.
    exported = str(tmp_path / "checkpoints" / "step_000002" / "policy_hf")
    model = load_causal_lm(exported)
    assert type(model).__name__ == "Gemma3ForCausalLM"
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()
    assert tokenizer_differences(load_tokenizer(exported), load_tokenizer(tiny_gemma_policy)) == []
