"""The [prompt | response] batch layout, masks with pad == eos, and sharding."""

from __future__ import annotations

import torch

import pytest

from rlhf_ray.data.batch import (build_batch, concat_batches, map_micro_batches, split_batch, split_list,
                            token_budget_bounds, trim_padding)
from rlhf_ray.data.prompts import PromptSampler

pytestmark = pytest.mark.unit

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


def _ragged_batch():
    prompts = [[5, 6], [7], [8, 9, 10, 11, 12], [13]]
    responses = [[1, 2, 3], [4], [5, 6], [7, 8, 9, 10, 11, 12]]
    return build_batch(prompts, responses, pad_id=0)


def test_trim_padding_drops_only_columns_padded_in_every_row():
    batch = _ragged_batch()
    mb = trim_padding({k: v[:2] for k, v in batch.items()})  # prompts ≤ 2, responses ≤ 3 tokens
    assert mb["input_ids"].tolist() == [[5, 6, 1, 2, 3], [0, 7, 4, 0, 0]]
    assert mb["response_ids"].tolist() == [[1, 2, 3], [4, 0, 0]]
    assert mb["response_mask"].shape == (2, 3) and mb["prompt_lengths"].tolist() == [2, 1]
    assert mb["position_ids"].tolist()[1][1:3] == [0, 1]
    assert trim_padding(batch)["input_ids"] is batch["input_ids"]  # nothing to drop


def test_map_micro_batches_returns_rows_in_order_at_full_width():
    batch = _ragged_batch()
    per_token = map_micro_batches(batch, 2, lambda mb: mb["response_ids"] * mb["response_mask"], per_token=True)
    assert torch.equal(per_token, batch["response_ids"] * batch["response_mask"])
    widths = []
    per_row = map_micro_batches(batch, 2, lambda mb: widths.append(mb["input_ids"].shape[1]) or mb["prompt_lengths"],
                                per_token=False)
    assert per_row.tolist() == [2, 1, 5, 1]
    assert sum(widths) < 2 * batch["input_ids"].shape[1]  # sorted by length: far less padding


def test_token_budget_bounds_against_a_hand_count():
    # rows (prompt, response), already sorted by length: (1,1) (2,1) (2,3) (4,4) (9,9)
    p, r = [1, 2, 2, 4, 9], [1, 1, 3, 4, 9]
    # budget 12: [3 rows × (2+3) = 15 > 12] → first two (2 × 3 = 6) | (2,3)+(4,4): 2 × 8 = 16 > 12 → alone
    assert token_budget_bounds(p, r, 12) == [0, 2, 3, 4, 5]
    assert token_budget_bounds(p, r, 16) == [0, 3, 4, 5]  # 3 × 5 = 15 fits; + (4,4): 4 × 8 = 32
    assert token_budget_bounds(p, r, 1) == [0, 1, 2, 3, 4, 5]  # too small: a row each, never none
    assert token_budget_bounds(p, r, 10**6) == [0, 5]


def test_map_micro_batches_by_token_budget_keeps_rows_and_order():
    batch = _ragged_batch()
    sizes = []
    per_token = map_micro_batches(batch, 1, lambda mb: sizes.append(mb["input_ids"].numel()) or
                                  mb["response_ids"] * mb["response_mask"], per_token=True, max_tokens=12)
    assert torch.equal(per_token, batch["response_ids"] * batch["response_mask"])
    assert max(sizes) <= 12 or len(sizes) == batch["input_ids"].shape[0]
    assert len(sizes) < batch["input_ids"].shape[0]  # short rows went together


def test_trimmed_micro_batches_give_the_full_batch_logprobs(tiny_policy):
    from rlhf_ray.models.forward import response_logprobs
    from rlhf_ray.models.loading import load_causal_lm

    model = load_causal_lm(tiny_policy, torch.float32).eval()
    batch = _ragged_batch()
    with torch.no_grad():
        full, _ = response_logprobs(model, batch)
        parts = map_micro_batches(batch, 2, lambda mb: response_logprobs(model, mb)[0], per_token=True)
    mask = batch["response_mask"].bool()
    torch.testing.assert_close(parts[mask], full[mask], atol=1e-5, rtol=0)
