"""Weights on the wire between the learner and the rollout engines.

Ray stores a numpy array in its object store with one copy and hands a reader on the same node a
view of that memory; a torch tensor is pickled instead (a copy on each side). Sending numpy views
saves two full copies of the model per sync (measured with SmolLM2: `benchmarks/bench_weight_sync.py`).
bfloat16 has no numpy type, so it travels as int16 bits and is viewed back.
"""

from __future__ import annotations

import warnings

import numpy as np
import torch

_BITS = {torch.bfloat16: torch.int16}


def to_wire(t: torch.Tensor) -> tuple[np.ndarray, str]:
    """A CPU tensor as a numpy array sharing its memory (no copy), and its torch dtype name."""
    dtype = str(t.dtype).removeprefix("torch.")
    t = t.detach().contiguous()
    return (t.view(_BITS[t.dtype]) if t.dtype in _BITS else t).numpy(), dtype


def from_wire(array: np.ndarray, dtype: str) -> torch.Tensor:
    """The tensor back, as a view of ``array`` (read-only memory from the object store is fine:
    the engines only ever copy out of it)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable")
        t = torch.from_numpy(array)
    want = getattr(torch, dtype)
    return t.view(want) if t.dtype != want else t


def unpack(bucket: list[tuple]) -> list[tuple[str, torch.Tensor]]:
    """A bucket of (name, array, dtype) entries (or plain (name, tensor) pairs) → (name, tensor)."""
    return [(e[0], from_wire(e[1], e[2])) if len(e) == 3 else (e[0], e[1]) for e in bucket]
