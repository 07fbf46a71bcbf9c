"""Weights on the wire: exact round trips for every training dtype, and no copy on the way."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from rlhf_ray.models.wire import from_wire, to_wire, unpack


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
def test_round_trip_is_exact_and_shares_memory(dtype):
    t = torch.randn(3, 5).to(dtype)
    array, name = to_wire(t)
    assert name == str(dtype).removeprefix("torch.")
    assert np.shares_memory(array, t.view(torch.int16).numpy() if dtype == torch.bfloat16 else t.numpy())
    back = from_wire(array, name)
    assert back.dtype == dtype and torch.equal(back, t)
    assert back.data_ptr() == t.data_ptr()  # a view, not a copy


def test_read_only_arrays_from_the_object_store_come_back_as_tensors():
    array, name = to_wire(torch.arange(6, dtype=torch.float32))
    array = array.copy()
    array.setflags(write=False)
    assert from_wire(array, name).tolist() == [0, 1, 2, 3, 4, 5]


def test_unpack_takes_wire_entries_and_plain_pairs():
    t = torch.ones(2, dtype=torch.bfloat16)
    out = unpack([("a", *to_wire(t)), ("b", t)])
    assert [n for n, _ in out] == ["a", "b"] and all(torch.equal(x, t) for _, x in out)


def test_ray_hands_back_the_same_values(local_ray):
    ray = local_ray
    state = {"w": torch.randn(4, 4), "h": torch.randn(8).to(torch.bfloat16)}
    got = unpack(ray.get(ray.put([(n, *to_wire(t)) for n, t in state.items()])))
    assert all(torch.equal(dict(got)[n], t) for n, t in state.items())
