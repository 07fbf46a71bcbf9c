"""LoRA on the trainable roles: the adapter maths against PEFT, the adapter-sized sync, the reference
for free, exports, ZeRO-3 and resume, on real Ray actors with tiny models."""

from __future__ import annotations


import pytest
import torch

from conftest import assert_fails_before_actors, tiny_overrides
from rlhf_ray.config import ConfigError, LoraConfig
from rlhf_ray.config.loading import load_config
from rlhf_ray.models.loading import load_causal_lm
from rlhf_ray.runs.checkpoint import CheckpointError
from rlhf_ray.models.lora import (LoraTargetError, adapter_config_json, adapter_parameters, apply_lora,
                                  merged_parameters, save_adapter, touched_modules)
from rlhf_ray.roles import PolicyLearner, Reference, Rollout
from rlhf_ray.roles.ds_worker import DeepSpeedWorker
from rlhf_ray.sync.adapter import check_adapter
from rlhf_ray.sync.manifest import WeightSyncError

LOGPROB_GAP_TOL = 1e-3  # as tests/test_ppo_integration.py: fp32 noise is ~1e-6, a missing adapter far more
LORA = ("learner.lora.rank=8", "learner.lora.alpha=16")


def _random_adapter(model, spec: LoraConfig, seed: int = 0):
    """A PEFT-wrapped model whose B factors are random (a fresh adapter's B is zero: it changes nothing)."""
    peft_model = apply_lora(model, spec, "learner.lora", causal_lm=True)
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in peft_model.named_parameters():
            if ".lora_" in name:  # A too: PEFT draws it from the global generator
                p.copy_(torch.randn(p.shape, generator=g) * 0.3)
    return peft_model


def _logprobs(model, ids):
    with torch.no_grad():
        logits = model(input_ids=torch.tensor([ids])).logits[0, :-1]
    return torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]


IDS = [1, 45, 67, 89, 100, 23, 56, 78, 90, 12, 3]


# ------------------------------------------------------------------ pure: config, merging, adapter folders

def test_config_resolves_the_sync_and_refuses_what_cannot_work(tiny_policy):
    cfg = load_config(overrides=[f"model.path={tiny_policy}", *LORA, "reference.source=learner_base"])
    assert cfg.learner.lora.rank == 8 and cfg.learner.lora.targets[0] == "q_proj" and cfg.critic.lora is None
    assert "reference" not in cfg.roles
    assert cfg.lora_sync_choice()[0] == "merged" and "engines on CPU" in cfg.lora_sync_choice()[1]
    assert load_config(overrides=[*LORA, "rollout.num_gpus_per_actor=1"]).lora_sync == "adapter"
    assert load_config(overrides=[*LORA, "sync.lora=adapter"]).lora_sync == "adapter"
    assert load_config(overrides=[*LORA, "rollout.backend=hf"]).lora_sync_choice() == (
        "merged", "rollout.backend=hf serves no adapters")
    assert load_config(overrides=["learner.lora.rank=12"]).lora_sync == "merged"  # not a rank vLLM serves
    assert load_config(overrides=["learner.lora.rank=12", "rollout.backend=hf"]).lora_sync == "merged"
    assert load_config(overrides=[]).lora_sync is None
    for extra, message in ((["reference.source=learner_base"], "set learner.lora"),
                           ([*LORA, "sync.lora=adapter", "rollout.backend=hf"], "set rollout.backend=vllm"),
                           (["learner.lora.rank=12", "sync.lora=adapter"], "not learner.lora.rank=12"),
                           (["learner.lora.targets=[embed_tokens]", "sync.lora=adapter"], "['embed_tokens']"),
                           (["learner.lora.rnak=8"], "rnak")):
        with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("]", r"\]")):
            load_config(overrides=extra)


def test_merged_weights_equal_peft_merge_and_touch_only_adapted_layers(tiny_policy):
    base = load_causal_lm(tiny_policy)
    original = {n: p.detach().clone() for n, p in base.named_parameters()}
    model = _random_adapter(base, LoraConfig(rank=4, alpha=8, targets=["q_proj", "down_proj"]))
    merged = dict(merged_parameters(model, zero3=False, source=True))
    reference = load_causal_lm(tiny_policy)
    reference = _random_adapter(reference, LoraConfig(rank=4, alpha=8, targets=["q_proj", "down_proj"])).merge_and_unload()
    assert set(merged) == set(original)  # plain HF names, nothing PEFT-only
    for name, p in reference.named_parameters():
        assert torch.allclose(merged[name], p, atol=1e-6), name
    changed = {n for n in merged if not torch.equal(merged[n], original[n])}
    assert changed == {f"model.layers.{i}.{m}.weight" for i in range(2) for m in ("self_attn.q_proj", "mlp.down_proj")}
    # touched_only: the adapted modules and their fused siblings (vLLM rebuilds q/k/v together), nothing else.
    touched = dict(merged_parameters(model, zero3=False, source=True, touched_only=True))
    assert set(touched) == {f"model.layers.{i}.{m}.weight" for i in range(2)
                            for m in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.down_proj")}
    assert touched_modules(model) == {n.removesuffix(".weight") for n in touched}
    # The merged model is the adapted one.
    assert torch.allclose(_logprobs(model, IDS), _logprobs(reference, IDS), atol=1e-5)
    assert not torch.allclose(_logprobs(model, IDS), _logprobs(load_causal_lm(tiny_policy), IDS), atol=1e-3)


def test_adapter_folder_loads_in_peft_and_is_checked_against_the_model(tiny_policy, tmp_path):
    from peft import PeftModel

    from rlhf_ray.models.headers import weight_shapes

    model = _random_adapter(load_causal_lm(tiny_policy), LoraConfig(rank=8, alpha=16))
    named = list(adapter_parameters(model, zero3=False, source=True))
    assert len(named) == 2 * 7 * 2  # A and B of 7 projections in 2 layers
    save_adapter(str(tmp_path / "adapter"), named, adapter_config_json(model))
    loaded = PeftModel.from_pretrained(load_causal_lm(tiny_policy), str(tmp_path / "adapter")).eval()
    assert torch.allclose(_logprobs(loaded, IDS), _logprobs(model, IDS), atol=1e-6)
    shapes = weight_shapes(tiny_policy)
    check_adapter(named, shapes, 8, "rollout-0")
    with pytest.raises(WeightSyncError, match="rank-4 factor"):
        check_adapter(named, shapes, 4, "rollout-0")
    renamed = [(n.replace("q_proj", "qq_proj"), t) for n, t in named]
    with pytest.raises(WeightSyncError, match="qq_proj.weight' which is not a weight|which is not a weight"):
        check_adapter(renamed, shapes, 8, "rollout-0")
    with pytest.raises(WeightSyncError, match="carried no tensors"):
        check_adapter([], shapes, 8, "rollout-0")


def test_plan_counts_adapter_sized_model_states(tiny_policy):
    """The memory plan's adapter count equals PEFT's; the LoRA learner's gradients and Adam states are
    those of the adapter, its weights the whole (frozen) model plus the adapter."""
    from rlhf_ray.planning.memory import model_shape, trained_estimate

    shape = model_shape(tiny_policy)
    model = apply_lora(load_causal_lm(tiny_policy), LoraConfig(rank=8, targets=["q_proj", "up_proj"]), "learner.lora")
    adapter = sum(p.numel() for n, p in model.named_parameters() if ".lora_" in n)
    assert shape.lora_params(["q_proj", "up_proj"], 8) == adapter == 2 * (8 * (64 + 64) + 8 * (64 + 128))
    full = trained_estimate(load_config(overrides=[f"model.path={tiny_policy}"]), "learner", shape).parts
    lora = trained_estimate(load_config(overrides=[f"model.path={tiny_policy}", "learner.lora.rank=8",
                                                   "learner.lora.targets=[q_proj,up_proj]"]), "learner", shape).parts
    assert (lora["weights"], lora["gradients"], lora["optimizer"]) == (full["weights"] + 4 * adapter, 4 * adapter, 8 * adapter)


def test_unknown_target_module_is_named(tiny_policy):
    with pytest.raises(LoraTargetError, match=r"critic.lora.targets: \['qkv'\] are not linear modules"):
        apply_lora(load_causal_lm(tiny_policy), LoraConfig(targets=["q_proj", "qkv"]), "critic.lora")


# ------------------------------------------------------------------ real actors

def _counts(group):
    return group.get(group.call(DeepSpeedWorker.parameter_counts), "parameter counts")


def _probe_batch(trainer):
    from rlhf_ray.data.batch import build_batch

    prompts = trainer.train_set.ids[:3]
    responses = [trainer.tokenizer(t, add_special_tokens=False)["input_ids"] for t in ("12", "7 + 5 = 12", "no")]
    return prompts, responses, build_batch(prompts, responses, trainer.tokenizer.pad_token_id)


def _engine_gap(trainer) -> float:
    """Largest |engine − learner| log-prob of fixed responses, over every engine."""
    prompts, responses, batch = _probe_batch(trainer)
    learner = trainer.learner.gather_cat(trainer.learner.map_batch(PolicyLearner.compute_logprobs, batch))
    engines = trainer.rollout.get(trainer.rollout.call(Rollout.score_logprobs, prompts, responses))
    return max(abs(e - float(learner[i, j])) for eng in engines for i, row in enumerate(eng) for j, e in enumerate(row))


def test_lora_ppo_serves_each_adapter_version_and_the_gap_check_catches_one_not_applied(local_ray, tiny_policy, tmp_path):
    """PPO with LoRA learner and critic, the reference from the learner's base (no reference actor),
    adapter-sized sync into vLLM: after every sync each engine serves the learner's adapter at the
    learner's version; only adapters (and the value head) train; the exports load. Then an engine
    that reports the version but serves the base (an adapter never applied) trips the gap check."""
    pytest.importorskip("vllm")
    from peft import PeftModel

    from rlhf_ray.trainers.ppo import LogprobGapError, PPOTrainer

    cfg = load_config(overrides=tiny_overrides(
        tiny_policy, tmp_path, *LORA, "critic.lora.rank=8", "reference.source=learner_base", "learner.lr=2e-2",
        "sync.lora=adapter", "rollout.num_actors=2", "trainer.total_steps=3", "ppo.logprob_gap_action=stop"))
    trainer = PPOTrainer.from_config(cfg)
    try:
        assert trainer.reference is None and "reference" not in trainer.groups
        (learner,), (critic,) = _counts(trainer.learner), _counts(trainer.critic)
        assert learner["trainable"] == learner["lora"] == 2 * (4 * 8 * (64 + 64) + 3 * 8 * (64 + 128))  # q/k/v/o and gate/up/down
        assert critic["trainable"] == critic["lora"] + 64  # the value head [1, hidden=64] trains in full
        for step in (1, 2):
            metrics = trainer.step(step)
            assert metrics["sync/buckets"] == 1 and metrics["sync/bytes"] == 4 * learner["lora"]
            digest = trainer.learner.get(trainer.learner.call(PolicyLearner.adapter_digest))[0]
            served = trainer.rollout.get(trainer.rollout.call(Rollout.served_adapter))
            assert [s["version"] for s in served] == [step, step] and {s["digest"] for s in served} == {digest}
            assert _engine_gap(trainer) < LOGPROB_GAP_TOL
        assert metrics["check/logprob_gap_mean"] < LOGPROB_GAP_TOL  # step 2 sampled with adapter version 1
        (learner,), (critic,) = _counts(trainer.learner), _counts(trainer.critic)
        assert learner["in_optimizer"] == learner["lora"] and critic["in_optimizer"] == critic["trainable"]
        ckpt = trainer.save_checkpoint(2, {})
        merged, adapter = f"{ckpt}/policy_hf", f"{ckpt}/policy_adapter"
        base = load_causal_lm(tiny_policy)
        served = PeftModel.from_pretrained(load_causal_lm(tiny_policy), adapter).eval()
        assert torch.allclose(_logprobs(load_causal_lm(merged), IDS), _logprobs(served, IDS), atol=1e-5)
        # Adapters only: the merged export differs from the base in the adapted projections alone.
        exported = dict(load_causal_lm(merged).named_parameters())
        changed = {n for n, p in base.named_parameters() if not torch.equal(p, exported[n])}
        assert changed and all(n.rsplit(".", 2)[-2] in cfg.learner.lora.targets for n in changed)
        # An engine that reports version 2 but serves a zero adapter: the base model, not the learner's.
        named = [(n, torch.zeros_like(t)) for n, t in adapter_parameters(served, zero3=False, source=True)]
        from rlhf_ray.models.wire import to_wire

        config_json = (tmp_path / "checkpoints" / "step_000002" / "policy_adapter" / "adapter_config.json").read_text()
        trainer.rollout.get(trainer.rollout.call(Rollout.load_adapter, 2, config_json,
                                                 [(n, *to_wire(t)) for n, t in named]))
        with pytest.raises(LogprobGapError, match="step 3: rollout/learner log-prob gap"):
            trainer.step(3)
    finally:
        trainer.shutdown()


def test_learner_base_reference_equals_reference_actor_zero3_merged_sync(local_ray, tiny_policy, tmp_path):
    """GRPO, a LoRA learner over two ZeRO-3 ranks, the transformers engine (so the merged layers are
    synced): the learner with adapters off scores what the reference actor scores, while the adapted
    policy has moved off it; the engine serves the merged weights."""
    from rlhf_ray.trainers.ppo import PPOTrainer

    cfg = load_config(overrides=tiny_overrides(
        tiny_policy, tmp_path, "algorithm=grpo", *LORA, "learner.lr=2e-2", "rollout.backend=hf",
        "ppo.entropy_coef=0.5",  # a gradient even when every sample of the tiny model scores 0
        "learner.num_actors=2", "learner.zero_stage=3", "learner.micro_batch_samples_per_actor=2",
        "trainer.total_steps=1"))
    assert cfg.lora_sync == "merged"
    trainer = PPOTrainer.from_config(cfg)
    try:
        assert _engine_gap(trainer) < LOGPROB_GAP_TOL
        metrics = trainer.step(1)
        assert _engine_gap(trainer) < LOGPROB_GAP_TOL
        _, _, batch = _probe_batch(trainer)
        reference = trainer.reference.gather_cat(trainer.reference.map_batch(Reference.compute_logprobs, batch))
        base = trainer.learner.gather_cat(trainer.learner.map_batch(PolicyLearner.compute_base_logprobs, batch))
        policy = trainer.learner.gather_cat(trainer.learner.map_batch(PolicyLearner.compute_logprobs, batch))
        mask = batch["response_mask"].bool()
        assert (base - reference)[mask].abs().max() < 1e-5
        assert (policy - reference)[mask].abs().max() > 1e-3  # the adapter is live in the policy's forward
        # Merged sync: the touched projections of 2 layers (7 × 2 weights), not the embeddings or norms.
        full = sum(p.numel() for p in load_causal_lm(tiny_policy).parameters()) * 4
        assert 0 < metrics["sync/bytes"] < full
        counts = _counts(trainer.learner)
        assert counts[0]["trainable"] == counts[0]["lora"] < counts[0]["total"] / 5
        # ZeRO-3: each rank holds its partition of the adapters' optimizer state, nothing of the base.
        held = sum(c["in_optimizer"] for c in counts)
        assert counts[0]["lora"] <= held <= counts[0]["lora"] + 64 and all(c["in_optimizer"] for c in counts)
    finally:
        trainer.shutdown()


def test_lora_dpo_reference_for_free_and_exports(local_ray, tiny_policy, tmp_path):
    """DPO with LoRA and the reference read from the learner's base: no reference actor; its reference
    log-probs are the base model's; the policy moves; the merged and PEFT exports are the same model."""
    from peft import PeftModel

    from rlhf_ray.data.batch import build_batch
    from rlhf_ray.models.forward import sequence_logprobs
    from rlhf_ray.trainers.offline import OfflineTrainer
    from test_offline_integration import fit, overrides, write_pairs

    data = write_pairs(tmp_path / "pairs.jsonl")
    cfg = load_config(overrides=overrides(tiny_policy, tmp_path / "run", data, "dpo", *LORA, "learner.lr=2e-2",
                                          "reference.source=learner_base", "offline.save_final=true"))
    trainer = OfflineTrainer.from_config(cfg)
    groups = set(trainer.groups)
    summary = fit(trainer)
    assert trainer.reference is None and groups == {"learner"}
    assert summary["eval"][0]["eval/margin"] == pytest.approx(0.0, abs=1e-5)  # B = 0: the policy is its base
    assert summary["eval"][2]["eval/margin"] > 0.05
    units = trainer.eval.units
    batch = build_batch([u.prompt for u in units for _ in u.responses], [r for u in units for r in u.responses],
                        trainer.tokenizer.pad_token_id)
    with torch.no_grad():
        base = sequence_logprobs(load_causal_lm(tiny_policy).eval(), batch)[:, 0]
        merged = sequence_logprobs(load_causal_lm(str(tmp_path / "run" / "final")).eval(), batch)[:, 0]
        adapted = PeftModel.from_pretrained(load_causal_lm(tiny_policy), str(tmp_path / "run" / "final_adapter")).eval()
        adapted = sequence_logprobs(adapted, batch)[:, 0]
    assert torch.allclose(trainer.ref_eval, base, atol=1e-4)
    assert torch.allclose(merged, adapted, atol=1e-4) and not torch.allclose(merged, base, atol=1e-2)


@pytest.mark.parametrize("algorithm,extra,keys", [
    ("sft", [*LORA], ("learner/sft_loss",)),
    ("kto", [*LORA, "reference.source=learner_base"], ("learner/loss", "learner/kl")),
    ("reward_model", ["reward.lora.rank=8", "offline.save_final=true"], ("reward/loss", "reward/accuracy")),
])
def test_lora_trains_every_offline_family(local_ray, tiny_policy, tmp_path, algorithm, extra, keys):
    from rlhf_ray.trainers import controller_for
    from test_offline_integration import check_finite, fit, metrics_rows, overrides, write_pairs

    data = write_pairs(tmp_path / "pairs.jsonl", n=8)
    cfg = load_config(overrides=overrides(tiny_policy, tmp_path, data, algorithm, *extra))
    trainer = controller_for(cfg)
    try:
        (before,) = _counts(trainer.trained)
        head = 64 if algorithm == "reward_model" else 0  # the score head [1, hidden] trains in full
        assert before["trainable"] == before["lora"] + head and before["lora"] > 0
    except BaseException:
        trainer.shutdown()
        raise
    fit(trainer)
    check_finite(metrics_rows(tmp_path)[1:], keys)
    if algorithm == "reward_model":  # the merged export is a plain sequence classifier with the trained head
        from transformers import AutoModelForSequenceClassification

        model = AutoModelForSequenceClassification.from_pretrained(str(tmp_path / "final"))
        assert model.score.weight.abs().sum() > 0 and not (tmp_path / "final_adapter").exists()


def test_lora_resume_equals_a_straight_run(local_ray, tiny_policy, tmp_path):
    """PPO with LoRA learner and critic and adapter sync: checkpoints hold adapters (and the value
    head) with their optimizer state, not the frozen base; a resumed run's next step equals the
    straight run's, and its engines serve the restored adapter."""
    from test_checkpoint import _run

    common = (*LORA, "critic.lora.rank=8", "reference.source=learner_base", "sync.lora=adapter", "trainer.save_every=1",
              "trainer.save_hf=false", "trainer.seed=3", "learner.lr=2e-2")
    straight = _run(tiny_policy, tmp_path / "a", 2, *common)
    _run(tiny_policy, tmp_path / "b", 1, *common)
    resumed = _run(tiny_policy, tmp_path / "b", 2, *common, "trainer.resume=auto")
    assert [r["step"] for r in resumed] == [0, 1, 2]
    for key in ("reward/mean", "kl/mean", "learner/policy_loss", "critic/value_loss", "response/length_mean"):
        assert resumed[2][key] == pytest.approx(straight[2][key], rel=1e-4, abs=1e-6), key
    assert resumed[2]["check/logprob_gap_mean"] < LOGPROB_GAP_TOL  # the engines got the restored adapter
    assert straight[2]["sync/bytes"] == resumed[2]["sync/bytes"] < 1e6
    state = torch.load(next((tmp_path / "b" / "checkpoints" / "step_000002" / "learner").rglob("*model_states.pt")),
                       weights_only=False)["module"]
    assert state and all(".lora_" in name for name in state)  # the base comes from the model folder
    state = torch.load(next((tmp_path / "b" / "checkpoints" / "step_000002" / "critic").rglob("*model_states.pt")),
                       weights_only=False)["module"]
    assert {n for n in state if ".lora_" not in n} == {"base_model.model.value_head.weight"}
    # Other adapters, or none, cannot continue it: refused before any actor starts.
    for extra, message in ((("learner.lora.rank=16",), "learner.lora.rank: checkpoint 8, now 16"),
                           (("critic.lora=null",), "critic.lora.rank: checkpoint 8, now None")):
        cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "b", "trainer.total_steps=3", *common,
                                                   "trainer.resume=auto", *extra))
        assert_fails_before_actors(cfg, CheckpointError, message)
