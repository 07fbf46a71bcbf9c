"""Sequence packing: the packed forward must give the padded forward's log-probs, entropies and
gradients, on a real (tiny) transformers Llama."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.data.batch import build_batch, micro_batches
from rlhf_ray.models.forward import response_logprobs, sequence_logprobs
from rlhf_ray.models.packing import first_fit_decreasing, pack
from rlhf_ray.models.packing_check import packing_matches

pytestmark = pytest.mark.unit


def ragged_batch(seed: int = 0, rows: int = 6, vocab: int = 500) -> dict:
    g = torch.Generator().manual_seed(seed)
    lens = torch.randint(1, 12, (rows, 2), generator=g).tolist()
    prompts = [torch.randint(3, vocab, (p,), generator=g).tolist() for p, _ in lens]
    responses = [torch.randint(3, vocab, (r,), generator=g).tolist() for _, r in lens]
    return build_batch(prompts, responses, pad_id=0)


def test_first_fit_decreasing_against_a_hand_count():
    bins = first_fit_decreasing([5, 3, 4, 2, 1], capacity=5)
    assert bins == [[0], [2, 4], [1, 3]]
    assert first_fit_decreasing([5, 5], capacity=10) == [[0, 1]]
    with pytest.raises(ValueError, match="does not fit"):
        first_fit_decreasing([6], capacity=5)


def test_pack_lays_real_tokens_end_to_end_with_restarting_positions():
    batch = build_batch([[11, 12, 13], [21], [31, 32]], [[14, 15], [22, 23, 24], [33]], pad_id=0)
    layout = pack(batch)
    # lengths 5, 4, 3 into rows of 5: [row0], [row1], [row2] (4 + 3 > 5)
    assert layout.input_ids.tolist() == [[11, 12, 13, 14, 15], [21, 22, 23, 24, 0], [31, 32, 33, 0, 0]]
    assert layout.position_ids.tolist() == [[0, 1, 2, 3, 4], [0, 1, 2, 3, 0], [0, 1, 2, 0, 1]]
    # response token t of a row is predicted one column before it
    assert layout.targets.tolist() == [14, 15, 22, 23, 24, 33]
    assert list(zip(layout.src_bin.tolist(), layout.src_col.tolist())) == [(0, 2), (0, 3), (1, 0), (1, 1), (1, 2),
                                                                           (2, 1)]
    assert list(zip(layout.dst_row.tolist(), layout.dst_col.tolist())) == [(0, 0), (0, 1), (1, 0), (1, 1), (1, 2),
                                                                           (2, 0)]
    shared = pack(build_batch([[1, 2, 3], [4], [6]], [[9], [5], [7]], pad_id=0))  # lengths 4, 2, 2
    assert shared.input_ids.tolist() == [[1, 2, 3, 9], [4, 5, 6, 7]]
    assert shared.position_ids.tolist() == [[0, 1, 2, 3], [0, 1, 0, 1]]
    assert shared.targets.tolist() == [9, 5, 7]
    assert list(zip(shared.last_bin.tolist(), shared.last_col.tolist())) == [(0, 3), (1, 1), (1, 3)]

def test_packed_forward_equals_padded_forward(tiny_policy):
    from rlhf_ray.models.loading import load_causal_lm

    model = load_causal_lm(tiny_policy).eval()
    batch = ragged_batch()
    assert pack(batch).tokens < batch["input_ids"].numel()  # the packing does save columns here
    with torch.no_grad():
        lp_pad, ent_pad = response_logprobs(model, batch, temperature=0.7, with_entropy=True)
        lp_pack, ent_pack = response_logprobs(model, batch, temperature=0.7, with_entropy=True, pack=True)
    mask = batch["response_mask"].bool()
    assert torch.allclose(lp_pack[mask], lp_pad[mask], atol=1e-5)
    assert torch.allclose(ent_pack[mask], ent_pad[mask], atol=1e-5)
    assert (lp_pack[~mask] == 0).all()
    assert torch.allclose(sequence_logprobs(model, batch, pack=True), sequence_logprobs(model, batch), atol=1e-4)


def test_packed_gradients_equal_padded_gradients(tiny_policy):
    from rlhf_ray.models.loading import load_causal_lm

    model = load_causal_lm(tiny_policy).train()
    batch = next(micro_batches(ragged_batch(seed=3), 6))

    def grads(pack_rows: bool) -> list[torch.Tensor]:
        model.zero_grad(set_to_none=True)
        logp, _ = response_logprobs(model, batch, pack=pack_rows)
        (logp * batch["response_mask"]).sum().backward()
        return [p.grad.clone() for p in model.parameters()]

    for a, b in zip(grads(False), grads(True)):
        assert torch.allclose(a, b, atol=1e-5, rtol=1e-4)


def test_packing_check_rejects_a_model_that_ignores_position_ids(tiny_policy):
    from rlhf_ray.models.loading import load_causal_lm

    model = load_causal_lm(tiny_policy)
    ok, diff = packing_matches(model)
    assert ok and diff < 1e-5

    original = model.forward

    def no_positions(*args, position_ids=None, **kwargs):  # every packed token then sees its row-mates
        return original(*args, **kwargs)

    model.forward = no_positions
    ok, diff = packing_matches(model)
    assert not ok and diff > 1e-3


def test_packed_values_equal_padded_values(tiny_policy):
    from rlhf_ray.models.forward import ValueModel, response_values

    model = ValueModel.from_pretrained(tiny_policy).eval()
    torch.nn.init.normal_(model.value_head.weight)  # a head near zero would hide differences
    batch = ragged_batch(seed=5)
    with torch.no_grad():
        padded, packed = response_values(model, batch), response_values(model, batch, pack=True)
    mask = batch["response_mask"].bool()
    assert padded[mask].abs().mean() > 0.1
    assert torch.allclose(packed[mask], padded[mask], atol=1e-5)
    assert packing_matches(model, response_values)[0]


def test_packed_reward_scores_equal_padded_scores(tiny_reward_model):
    from transformers import AutoModelForSequenceClassification

    from rlhf_ray.models.forward import sequence_scores

    model = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model).eval()
    batch = ragged_batch(seed=7)
    with torch.no_grad():
        padded, packed = sequence_scores(model, batch), sequence_scores(model, batch, pack=True)
    assert padded.shape == packed.shape == (6,)
    assert padded.std() > 1e-3  # distinct rows, so a wrong pooling position would show
    assert torch.allclose(packed, padded, atol=1e-5)
    assert packing_matches(model, sequence_scores)[0]
