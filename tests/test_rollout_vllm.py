"""The vLLM rollout role in-process on CPU, on more prompt tokens than vLLM's default step budget."""

from __future__ import annotations

import gc

import pytest
import torch

from rlhf_ray.config.loading import load_config


def test_seeded_batch_larger_than_default_token_budget(tiny_policy):
    """vLLM splits a prompt's prefill across steps when a step's token budget is full, then rewinds
    the seeded request's generator, which a CPU generator cannot do ("CPU Generator does not use
    offset"). 48 prompts of 120 tokens (5,760) exceed vLLM's default CPU budget; the role's budget
    must hold them whole, and the same seeds must give the same samples."""
    pytest.importorskip("vllm")
    from rlhf_ray.roles.rollout import Rollout

    cfg = load_config(overrides=[f"model.path={tiny_policy}", "model.max_prompt_tokens=128",
                                 "rollout.max_new_tokens=6", "rollout.temperature=1.0"])
    worker = Rollout(cfg)
    worker.init_model(tiny_policy)
    try:
        g = torch.Generator().manual_seed(0)
        prompts = [torch.randint(3, 500, (120,), generator=g).tolist() for _ in range(48)]
        first = worker.generate(prompts, seed=7)
        again = worker.generate(prompts, seed=7)
        assert len(first["response_ids"]) == 48
        assert all(1 <= len(r) <= 6 for r in first["response_ids"])
        assert first["response_ids"] == again["response_ids"]
        other = worker.generate(prompts, seed=8)
        assert other["response_ids"] != first["response_ids"]
    finally:
        worker.engine.llm_engine.engine_core.shutdown()
        del worker
        gc.collect()


def test_choice_logprobs_match_the_model(tiny_policy):
    """An LLM judge's verdict is P(choice) renormalised over the choices at the next token: vLLM's
    answer (sampling restricted to the choices) must equal the HF model's logits renormalised by hand,
    and the HF engine's own path must agree."""
    pytest.importorskip("vllm")
    from rlhf_ray.models.loading import load_causal_lm
    from rlhf_ray.roles.rollout import HFEngine, Rollout

    cfg = load_config(overrides=[f"model.path={tiny_policy}", "model.max_prompt_tokens=64"])
    model = load_causal_lm(tiny_policy, torch.float32).eval()
    g = torch.Generator().manual_seed(1)
    prompts = [torch.randint(3, 500, (n,), generator=g).tolist() for n in (5, 17, 40)]
    choices = [37, 101, 7]
    with torch.no_grad():
        expected = [torch.log_softmax(model(torch.tensor([p])).logits[0, -1, choices], 0).tolist() for p in prompts]
    for row, want in zip(HFEngine(model).choice_logprobs(prompts, choices), expected):
        assert row == pytest.approx(want, abs=1e-5)
    worker = Rollout(cfg)
    worker.init_model(tiny_policy)
    try:
        got = worker.choice_logprobs(prompts, choices)["choices"]
    finally:
        worker.engine.llm_engine.engine_core.shutdown()
        del worker
        gc.collect()
    for row, want in zip(got, expected):
        assert row == pytest.approx(want, abs=1e-4)
        assert sum(torch.tensor(row).exp()) == pytest.approx(1.0, abs=1e-5)
