"""The [prompt | response] batch layout, masks with pad == eos, and sharding."""

from __future__ import annotations

import torch

from rlhf_ray.batch import build_batch, concat_batches, split_batch, split_list
from rlhf_ray.prompts import PromptSampler

EOS = 2  # also the pad id, as in SmolLM2


def test_layout_and_masks_with_pad_equal_to_eos():
    prompts = [[5, 6, 7], [8]]
    responses = [[9, EOS], [10, 11, 12, EOS]]  # both end with the end token, which equals pad
    b = build_batch(prompts, responses, pad_id=EOS, rollout_logprobs=[[-1.0, -2.0], [-3.0] * 4])
    assert b["input_ids"].tolist() == [[5, 6, 7, 9, EOS, EOS, EOS], [EOS, EOS, 8, 10, 11, 12, EOS]]
    assert b["attention_mask"].tolist() == [[1, 1, 1, 1, 1, 0, 0], [0, 0, 1, 1, 1, 1, 1]]
    # the end token is part of the response mask even though it equals the pad id
    assert b["response_mask"].tolist() == [[1, 1, 0, 0], [1, 1, 1, 1]]
    # positions count from the first real token despite left padding
    assert b["position_ids"][1, 2:].tolist() == [0, 1, 2, 3, 4]
    assert b["position_ids"][0, :5].tolist() == [0, 1, 2, 3, 4]
    assert b["rollout_logprobs"][0].tolist() == [-1.0, -2.0, 0.0, 0.0]


def test_response_logits_align_with_response_tokens():
    """Logits at position P-1+t predict response token t: check on a model that copies its input."""
    b = build_batch([[3, 4], [5]], [[6, 7], [8]], pad_id=0)
    r = b["response_ids"].shape[1]
    shifted = b["input_ids"][:, -r - 1:-1]  # the tokens whose logits predict the response
    assert shifted.tolist() == [[4, 6], [5, 8]]


def test_split_and_concat_keep_order():
    b = build_batch([[1]] * 5, [[2, 3]] * 5, pad_id=0)
    b["idx"] = torch.arange(5)
    shards = split_batch(b, 2)
    assert [s["idx"].tolist() for s in shards] == [[0, 1], [2, 3, 4]]
    assert concat_batches(shards)["idx"].tolist() == list(range(5))
    assert split_list(list("abcde"), 2) == [["a", "b"], ["c", "d", "e"]]


def test_prompt_sampler_resumes_where_it_stopped():
    a = PromptSampler(size=7, seed=3)
    first = a.next(5)
    state = a.state_dict()
    rest = a.next(6)
    b = PromptSampler(size=7, seed=3)
    b.load_state_dict(state)
    assert b.next(6) == rest
    assert sorted(first + rest[:2]) == list(range(7))  # one epoch covers every prompt once
