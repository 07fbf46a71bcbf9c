"""Offline methods end to end through real Ray actors (learner, reference, reward trainer) with tiny models."""

from __future__ import annotations

import json
import math

import pytest
import torch

from rlhf_ray.config.loading import load_config

ALL_EVAL = ("eval/loss", "eval/accuracy", "eval/margin", "eval/reward_chosen", "eval/reward_rejected")


def write_pairs(path, n: int = 16) -> str:
    """Arithmetic prompts; chosen is the right answer, rejected a rambling wrong one."""
    with open(path, "w") as f:
        for i in range(n):
            a, b = i % 7, (3 * i) % 11
            f.write(json.dumps({"prompt": f"What is {a} + {b}?", "chosen": f"The answer is {a + b}.",
                                "rejected": f"What is the number {a} minus {b} times {a}"}) + "\n")
    return str(path)


def overrides(policy, run_dir, data, algorithm, *extra):
    return [f"algorithm={algorithm}", f"model.path={policy}", f"offline.train_file={data}", f"offline.eval_file={data}",
            "offline.batch_samples_global=4", "learner.micro_batch_samples_per_actor=2",
            "reward.micro_batch_samples_per_actor=2", "offline.max_prompt_tokens=48", "offline.max_length=80",
            "offline.max_steps=2", "offline.save_final=false", "learner.lr=1e-3", "reward.lr=1e-3",
            f"trainer.run_dir={run_dir}", "logging.wandb_mode=disabled", "logging.progress_bar=false", *extra]


def metrics_rows(run_dir):
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]


def check_finite(rows, keys):
    for r in rows:
        for k in keys:
            assert k in r and math.isfinite(r[k]), (r["step"], k)


def fit(trainer):
    try:
        return trainer.fit()
    finally:
        trainer.shutdown()


# ------------------------------------------------------------------ pure: row pairing and KTO's z0


def test_preference_objective_pairs_adjacent_rows():
    from rlhf_ray.algos.offline import preference_objective
    from rlhf_ray.config import OfflineConfig

    oc = OfflineConfig(beta=0.5)
    # rows: c0, r0, c1, r1 (summed log-probs); reference all zero
    logps, lengths = torch.tensor([-1.0, -3.0, -4.0, -2.0]), torch.tensor([1.0, 2.0, 2.0, 1.0])
    loss, m = preference_objective("dpo", oc, logps, lengths, torch.zeros(4))
    h = [0.5 * 2.0, 0.5 * -2.0]
    assert loss.item() == pytest.approx(sum(math.log1p(math.exp(-x)) for x in h) / 2, abs=1e-6)
    assert m["accuracy"] == 0.5 and m["margin"] == pytest.approx(0.0, abs=1e-6)
    assert m["logp_accuracy"] == 0.5  # per token: pair 0 -1 > -1.5, pair 1 -2 = -2 (a tie is no win)
    _, s = preference_objective("simpo", OfflineConfig(beta=2.0), logps, lengths)
    assert s["reward_chosen"] == pytest.approx((2.0 * -1.0 + 2.0 * -2.0) / 2)
    assert s["reward_rejected"] == pytest.approx((2.0 * -1.5 + 2.0 * -2.0) / 2)


def test_kto_objective_and_pairwise_accuracy():
    from rlhf_ray.algos.offline import kto_objective, kto_reference_point_distributed, pairwise_accuracy
    from rlhf_ray.config import OfflineConfig

    assert kto_reference_point_distributed(torch.tensor([-1.0, -2.0]), torch.tensor([-2.0, -2.0])) == pytest.approx(0.5)
    assert kto_reference_point_distributed(torch.tensor([-3.0]), torch.tensor([-1.0])) == 0.0  # clamped
    oc = OfflineConfig(beta=1.0)
    loss, m = kto_objective(oc, torch.tensor([0.0, 0.0]), torch.tensor([-1.0, 1.0]), torch.tensor([1.0, 0.0]), 0.0)
    sig = 1 / (1 + math.exp(-1.0))
    assert loss.item() == pytest.approx(1 - sig) and m["accuracy"] == 1.0 and m["margin"] == pytest.approx(2.0)
    rewards, labels = torch.tensor([1.0, 0.0, 0.0, 1.0, 5.0]), torch.tensor([1.0, 0.0, 1.0, 0.0, 1.0])
    assert pairwise_accuracy(rewards, labels, [0, 0, 1, 1, 2]) == 0.5  # pair 2 is incomplete
    assert pairwise_accuracy(rewards, labels, [None] * 5) is None


# ------------------------------------------------------------------ through Ray actors


def test_dpo_learns_and_saves_loadable_policy(local_ray, tiny_policy, tmp_path):
    from rlhf_ray.algos.offline import preference_objective
    from rlhf_ray.data.batch import build_batch
    from rlhf_ray.models.forward import sequence_logprobs
    from rlhf_ray.models.loading import load_causal_lm
    from rlhf_ray.trainers.offline import OfflineTrainer

    data = write_pairs(tmp_path / "pairs.jsonl")
    cfg = load_config(overrides=overrides(tiny_policy, tmp_path / "run", data, "dpo", "offline.max_steps=6",
                                          "learner.lr=5e-3", "offline.save_final=true", "offline.eval_every=3"))
    trainer = OfflineTrainer.from_config(cfg)
    summary = fit(trainer)
    before, after = summary["eval"][0], summary["eval"][6]
    assert set(summary["eval"]) == {0, 3, 6}
    # Before any step the policy is the reference: every implicit reward is zero up to float rounding
    # (so before-accuracy only counts rounding noise, and is not asserted).
    for key in ("eval/margin", "eval/reward_chosen", "eval/reward_rejected"):
        assert before[key] == pytest.approx(0.0, abs=1e-5), key
    assert before["eval/loss"] == pytest.approx(math.log(2), abs=1e-5)
    assert after["eval/margin"] > 0.5 and after["eval/accuracy"] >= 0.75 and after["eval/loss"] < 0.5
    rows = metrics_rows(tmp_path / "run")
    assert [r["step"] for r in rows] == list(range(7))
    check_finite(rows[1:], ["learner/loss", "learner/accuracy", "learner/margin", "learner/grad_norm",
                            "time/update", "time/reference"])
    # The saved folder holds the trained weights: its held-out DPO metrics match the last evaluation.
    final = tmp_path / "run" / "final"
    assert (final / "model.safetensors").is_file() and (final / "tokenizer.json").is_file()
    model, ref = load_causal_lm(str(final)).eval(), load_causal_lm(tiny_policy).eval()
    units = trainer.eval.units
    batch = build_batch([u.prompt for u in units for _ in u.responses], [r for u in units for r in u.responses],
                        trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        pol, ref_lp = sequence_logprobs(model, batch), sequence_logprobs(ref, batch)[:, 0]
    _, m = preference_objective("dpo", cfg.offline, pol[:, 0], pol[:, 1], ref_lp)
    assert m["margin"] == pytest.approx(after["eval/margin"], abs=1e-3)
    assert torch.allclose(ref_lp, trainer.ref_eval, atol=1e-4)


def test_reference_precompute_equals_per_batch(local_ray, tiny_policy, tmp_path):
    from rlhf_ray.data import collate
    from rlhf_ray.trainers.offline import OfflineTrainer

    data = write_pairs(tmp_path / "pairs.jsonl", n=12)
    cfg = load_config(overrides=overrides(tiny_policy, tmp_path / "run", data, "dpo", "offline.reference_logprobs=per_batch",
                                          "offline.max_steps=3"))
    trainer = OfflineTrainer.from_config(cfg)
    try:
        cached = trainer.precompute_reference()  # what precompute mode stores: length-sorted chunks
        assert sorted(cached) == list(range(12)) and all(v.shape == (2,) for v in cached.values())
        for index in ([0, 5, 7, 11], [3, 2, 1, 0]):
            batch = collate([trainer.train.units[i] for i in index], trainer.tokenizer.pad_token_id)
            live = trainer.batch_reference(batch, index)  # per_batch: the actors, this batch's padding
            expected = torch.cat([cached[i] for i in index])
            assert torch.allclose(live, expected, atol=1e-4), (live - expected).abs().max()
            trainer.ref_train = cached  # precompute mode reads the cache
            assert torch.equal(trainer.batch_reference(batch, index), expected)
            trainer.ref_train = None
        summary = trainer.fit()
        assert trainer.ref_train is None and set(summary["eval"]) == {0, 3}
    finally:
        trainer.shutdown()


def test_precompute_plans_only_the_units_a_run_visits():
    from rlhf_ray.data.prompts import PromptSampler
    from rlhf_ray.trainers.offline import planned_units

    sampler = PromptSampler(100, seed=3)
    drawn = {i for _ in range(5) for i in sampler.next(8)}
    assert planned_units(100, 3, 5, 8) == sorted(drawn) and len(drawn) == 40
    assert planned_units(10, 3, 50, 4) == list(range(10))  # many epochs: each unit once


@pytest.mark.parametrize("algorithm,extra,keys", [
    ("ipo", [], ("learner/loss", "learner/margin") + ALL_EVAL),
    ("cdpo", ["offline.label_smoothing=0.1"], ("learner/loss", "learner/accuracy") + ALL_EVAL),
    ("simpo", ["offline.beta=2.0"], ("learner/loss", "learner/reward_chosen") + ALL_EVAL),
    ("orpo", [], ("learner/loss", "learner/logps_chosen") + ALL_EVAL),
    ("kto", [], ("learner/loss", "learner/kl", "eval/kl") + ALL_EVAL),
    ("sft", [], ("learner/sft_loss", "eval/nll")),
])
def test_method_runs_through_actors(local_ray, tiny_policy, tmp_path, algorithm, extra, keys):
    from rlhf_ray.trainers import run

    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    cfg = load_config(overrides=overrides(tiny_policy, tmp_path, data, algorithm, "offline.eval_every=1", *extra))
    summary = run(cfg)
    rows = metrics_rows(tmp_path)
    assert [r["step"] for r in rows] == [0, 1, 2]
    check_finite(rows[1:], keys)
    assert set(summary["eval"]) == {0, 1, 2}
    if algorithm == "sft":  # imitating the chosen answers lowers their held-out NLL
        assert summary["eval"][2]["eval/nll"] < summary["eval"][0]["eval/nll"]
    else:
        assert 0.0 <= summary["eval"][2]["eval/accuracy"] <= 1.0


def test_reward_model_trains_saves_and_loads_in_reward_role(local_ray, tiny_policy, tmp_path):
    from transformers import AutoModelForSequenceClassification

    from rlhf_ray.data.batch import build_batch
    from rlhf_ray.roles.reward import Reward
    from rlhf_ray.trainers.reward_model import RewardModelTrainer

    data = write_pairs(tmp_path / "pairs.jsonl")
    cfg = load_config(overrides=overrides(tiny_policy, tmp_path / "run", data, "reward_model", "offline.max_steps=4",
                                          "offline.save_final=true", "offline.rm_margin=0.5"))
    trainer = RewardModelTrainer.from_config(cfg)
    summary = fit(trainer)
    rows = metrics_rows(tmp_path / "run")
    check_finite(rows[1:], ["reward/loss", "reward/accuracy", "reward/margin", "reward/grad_norm"])
    before, after = summary["eval"][0], summary["eval"][4]
    assert after["eval/accuracy"] >= 0.75 and after["eval/loss"] < before["eval/loss"] - 0.2
    final = str(tmp_path / "run" / "final")
    model = AutoModelForSequenceClassification.from_pretrained(final)
    assert model.config.num_labels == 1 and model.config.pad_token_id == trainer.tokenizer.pad_token_id
    # The PPO reward role loads the folder and scores by length: same held-out accuracy as the trainer saw.
    ppo_cfg = load_config(overrides=[f"model.path={tiny_policy}", "reward.kind=model", f"reward.model_path={final}"])
    role = Reward(ppo_cfg)
    role.init_model(final)
    units = trainer.eval.units
    batch = build_batch([u.prompt for u in units for _ in u.responses], [r for u in units for r in u.responses],
                        trainer.tokenizer.pad_token_id)
    n = batch["input_ids"].shape[0]
    scores = role.score(batch, [""] * n, [""] * n, [""] * n)
    accuracy = (scores[0::2] > scores[1::2]).float().mean().item()
    assert accuracy == pytest.approx(after["eval/accuracy"])
    assert (scores[0::2] - scores[1::2]).mean().item() == pytest.approx(after["eval/margin"], abs=1e-4)


def test_dpo_zero3_two_learners_save(local_ray, tiny_policy, tmp_path):
    """ZeRO-3 shards the policy: evaluation must give every rank equal work, and save_hf must gather
    full tensors (a partitioned parameter would be saved empty)."""
    from rlhf_ray.models.loading import load_causal_lm
    from rlhf_ray.trainers import run

    data = write_pairs(tmp_path / "pairs.jsonl", n=10)
    cfg = load_config(overrides=overrides(tiny_policy, tmp_path, data, "dpo", "learner.num_actors=2",
                                          "learner.zero_stage=3", "learner.micro_batch_samples_per_actor=1",
                                          "offline.save_final=true"))
    summary = run(cfg)
    assert summary["eval"][2]["eval/margin"] > 0.1
    initial = dict(load_causal_lm(tiny_policy).named_parameters())
    saved = dict(load_causal_lm(str(tmp_path / "final")).named_parameters())
    assert {k: v.shape for k, v in saved.items()} == {k: v.shape for k, v in initial.items()}
    assert all(not torch.equal(saved[k], initial[k]) for k in saved if k.endswith("q_proj.weight"))


@pytest.mark.slow
def test_saved_policy_serves_in_vllm(local_ray, tiny_policy, tmp_path):
    """The final folder is what vLLM loads too: same prompt log-probs as transformers."""
    pytest.importorskip("vllm")
    import os

    from vllm import LLM

    from rlhf_ray.models.loading import load_causal_lm
    from rlhf_ray.sync.vllm_weights import vllm_prompt_logprobs
    from rlhf_ray.trainers import run

    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    run(load_config(overrides=overrides(tiny_policy, tmp_path, data, "dpo", "offline.save_final=true")))
    final = str(tmp_path / "final")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    llm = LLM(model=final, dtype="float32", enforce_eager=True, max_model_len=256, kv_cache_memory_bytes=64 * 2**20)
    try:
        ids = list(range(3, 120))
        with torch.no_grad():
            logits = load_causal_lm(final).eval()(torch.tensor([ids])).logits[0]
        ref = torch.log_softmax(logits, -1)[:-1].gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert (torch.tensor(vllm_prompt_logprobs(llm, ids)) - ref).abs().max() < 1e-4
    finally:
        llm.llm_engine.engine_core.shutdown()
