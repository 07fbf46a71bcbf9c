"""A reward model whose tokenizer is not the policy's scores the texts in its own tokens; one that
shares it scores the policy's ids as before; texts alone (``score(None, ...)``) work for both.

The expected scores are computed here by hand, from the HF model and the texts spelled out in each
tokenizer's format, not through rlhf_ray's encoders."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from rlhf_ray.config.loading import load_config
from rlhf_ray.data.batch import build_batch
from rlhf_ray.models.loading import load_tokenizer
from rlhf_ray.models.tokenizer_match import tokenizer_differences
from rlhf_ray.roles.reward import Reward

SYSTEM, INSTRUCTION = "Answer with a number.", " Be brief."
QUESTIONS = ["What is 3 + 4?", "What is 10 - 2?", "What is 21 + 35?"]
RESPONSES = ["7", "8 is the answer", "The answer is 56."]
ANSWERS = ["7", "8", "56"]
TOL = 1e-5


def run_config(policy: str, reward_model: str):
    return load_config(overrides=[f"model.path={policy}", "reward.kind=model", f"reward.model_path={reward_model}",
                                  f"task.system_prompt={SYSTEM}", f"task.instruction='{INSTRUCTION}'"])


def policy_batch(tok, with_eos: bool):
    """The samples as the controller sends them: the policy's prompt ids and response ids."""
    prompts = [tok.apply_chat_template([{"role": "system", "content": SYSTEM}, {"role": "user", "content": q + INSTRUCTION}],
                                       tokenize=False, add_generation_prompt=True) for q in QUESTIONS]
    prompt_ids = [tok(p, add_special_tokens=False).input_ids for p in prompts]
    response_ids = [tok(r, add_special_tokens=False).input_ids + ([tok.eos_token_id] if with_eos else [])
                    for r in RESPONSES]
    return prompt_ids, response_ids


def gemma_texts() -> list[str]:
    """The plain template of the Gemma tokenizers (rlhf_ray.models.gemma3), written out."""
    return [f"<bos>{SYSTEM}\n\nUser: {q}{INSTRUCTION}\nAssistant:" for q in QUESTIONS]


def direct_scores(path: str, sequences: list[list[int]]) -> list[float]:
    """The HF model's own score of each sequence, one at a time: given embeddings, it reads the last
    position (given ids, it would look for the last non-pad token, and the Llama's pad is its EOS)."""
    model = AutoModelForSequenceClassification.from_pretrained(path, dtype=torch.float32).eval()
    with torch.no_grad():
        return [model(inputs_embeds=model.get_input_embeddings()(torch.tensor([s]))).logits[0, 0].item()
                for s in sequences]


@pytest.fixture
def reward_actor(local_ray):
    """Starts a Reward actor for a config and model folder; kills every one at the end."""
    actors = []

    def start(cfg, path):
        actor = local_ray.remote(num_cpus=0.5)(Reward).remote(cfg)
        actors.append(actor)
        local_ray.get(actor.init_model.remote(path), timeout=180)
        return actor

    yield start
    for actor in actors:
        local_ray.kill(actor)


def test_tokenizer_differences(tiny_policy, tiny_reward_model, tiny_gemma_policy, tiny_gemma_reward_model):
    llama, gemma = load_tokenizer(tiny_policy), load_tokenizer(tiny_gemma_policy)
    assert tokenizer_differences(llama, load_tokenizer(tiny_reward_model)) == []
    assert tokenizer_differences(gemma, load_tokenizer(tiny_gemma_reward_model)) == []
    found = tokenizer_differences(gemma, llama)
    assert found[0] == "vocabulary (640 against 512 tokens)"
    assert {"bos_token_id (2 against 1)", "eos_token_id (1 against 2)", "chat template"} <= set(found)
    other = load_tokenizer(tiny_policy)
    other.chat_template = other.chat_template.replace("assistant", "bot")
    assert tokenizer_differences(other, llama) == ["chat template"]
    other = load_tokenizer(tiny_policy)
    other.pad_token = "<|endoftext|>"
    assert tokenizer_differences(other, llama) == ["pad_token_id (0 against 2)"]


def test_reward_model_with_another_tokenizer_scores_the_texts(reward_actor, local_ray, tiny_policy, tiny_gemma_reward_model):
    """Policy: the tiny Llama, so the batch holds Llama ids; reward model: the tiny Gemma. Its scores are
    the HF model's on the texts in Gemma's format (template with <bos>, response, <eos>), whatever the
    batch holds, and also without one."""
    llama, gemma = load_tokenizer(tiny_policy), load_tokenizer(tiny_gemma_reward_model)
    prompt_ids, response_ids = policy_batch(llama, with_eos=True)
    batch = build_batch(prompt_ids, response_ids, llama.pad_token_id)
    expected = direct_scores(tiny_gemma_reward_model, [
        gemma(p, add_special_tokens=False).input_ids + gemma(r, add_special_tokens=False).input_ids + [gemma.eos_token_id]
        for p, r in zip(gemma_texts(), RESPONSES)])
    actor = reward_actor(run_config(tiny_policy, tiny_gemma_reward_model), tiny_gemma_reward_model)
    scores = local_ray.get(actor.score.remote(batch, QUESTIONS, RESPONSES, ANSWERS), timeout=60)
    assert scores.tolist() == pytest.approx(expected, abs=TOL)
    # The Llama ids fed to the Gemma model as they are score something else entirely.
    as_is = direct_scores(tiny_gemma_reward_model, [p + r for p, r in zip(prompt_ids, response_ids)])
    assert max(abs(a - b) for a, b in zip(as_is, expected)) > 100 * TOL
    texts_only = local_ray.get(actor.score.remote(None, QUESTIONS, RESPONSES, ANSWERS), timeout=60)
    assert texts_only.tolist() == pytest.approx(expected, abs=TOL)


def test_reward_model_with_the_policy_tokenizer_scores_the_batch(reward_actor, local_ray, tiny_policy, tiny_reward_model):
    """Same tokenizer: the policy's ids are scored as they come (responses cut by length keep no EOS, as
    generated); texts alone are encoded in the policy's format, the response ending with EOS."""
    tok = load_tokenizer(tiny_policy)
    prompt_ids, response_ids = policy_batch(tok, with_eos=False)
    batch = build_batch(prompt_ids, response_ids, tok.pad_token_id)
    actor = reward_actor(run_config(tiny_policy, tiny_reward_model), tiny_reward_model)
    scores = local_ray.get(actor.score.remote(batch, QUESTIONS, RESPONSES, ANSWERS), timeout=60)
    as_generated = direct_scores(tiny_reward_model, [p + r for p, r in zip(prompt_ids, response_ids)])
    assert scores.tolist() == pytest.approx(as_generated, abs=TOL)
    texts_only = local_ray.get(actor.score.remote(None, QUESTIONS, RESPONSES, ANSWERS), timeout=60)
    with_eos = direct_scores(tiny_reward_model, [p + r + [tok.eos_token_id] for p, r in zip(prompt_ids, response_ids)])
    assert texts_only.tolist() == pytest.approx(with_eos, abs=TOL)
    assert max(abs(a - b) for a, b in zip(with_eos, as_generated)) > 100 * TOL
    # Texts that say which answers were cut at the length limit: those score as generated, without EOS,
    # as the batch would have them (a judge scoring texts agrees with the run's reward).
    ended = [True, False, False]
    mixed = local_ray.get(actor.score.remote(None, QUESTIONS, RESPONSES, ANSWERS, ended), timeout=60)
    assert mixed.tolist() == pytest.approx([with_eos[0], as_generated[1], as_generated[2]], abs=TOL)


def test_reward_model_with_another_tokenizer_refuses_trajectories(tiny_policy, tiny_gemma_reward_model):
    """With env.* the batch holds whole trajectories in the policy's tokens, the texts only their last turn."""
    cfg = load_config(overrides=["model.path=" + tiny_policy, "reward.kind=model", f"reward.model_path={tiny_gemma_reward_model}",
                                 "env.environment=rlhf_ray.envs.guess:GuessNumberEnvironment", "algorithm=grpo"])
    with pytest.raises(ValueError, match="tokenizer differs from the policy's"):
        Reward(cfg).init_model(tiny_gemma_reward_model)
