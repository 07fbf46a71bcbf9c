"""Adapter-sized weight sync (sync.lora=adapter): a LoRA learner sends its adapter alone, and every
rollout engine serves it through vLLM's LoRA support as a new adapter version.

The adapter is a few MiB (SmolLM2 at rank 16: 4.9 M parameters, 20 MB in fp32, against 538 MB for the
whole model), so it always travels as one object-store object that every engine pulls, whatever
sync.transport says. Each engine checks every tensor against its own model before loading: a name
that is not a LoRA factor of one of the model's linear weights, or a factor whose shape does not fit
that weight, fails the sync with the name in the message.
"""

from __future__ import annotations

import re
import time

import ray
import torch

from rlhf_ray.models.lora import PREFIX
from rlhf_ray.models.wire import to_wire
from rlhf_ray.sync.manifest import WeightSyncError
from rlhf_ray.sync.send import sync_metrics

_FACTOR = re.compile(r"^(.*)\.lora_([AB])\.weight$")


def send_adapter(engines: list, version: int, named: list[tuple[str, torch.Tensor]], config_json: str) -> dict[str, float]:
    """One object-store put of the adapter, one load call per engine; the sync's metrics."""
    start = time.perf_counter()
    wire = [(name, *to_wire(t)) for name, t in named]
    ref = ray.put(wire)
    sent = time.perf_counter()
    ray.get([e.load_adapter.remote(version, config_json, ref) for e in engines])
    done = time.perf_counter()
    nbytes = sum(t.numel() * t.element_size() for _, t in named)
    return sync_metrics(nbytes, 1, done - start, {"prepare": 0.0, "transfer": sent - start, "wait": done - sent})


def check_adapter(named: list[tuple[str, torch.Tensor]], model_shapes: dict[str, tuple[int, ...]] | None,
                  rank: int, engine: str) -> None:
    """Every tensor a LoRA factor (A: [r, in], B: [out, r]) of a linear weight [out, in] of the served model."""
    if not named:
        raise WeightSyncError(f"{engine}: an adapter sync carried no tensors")
    for name, t in named:
        m = _FACTOR.match(name)
        if m is None or not name.startswith(PREFIX):
            raise WeightSyncError(f"{engine}: {name!r} is not a LoRA factor (…lora_A.weight / …lora_B.weight)")
        weight = m.group(1).removeprefix(PREFIX) + ".weight"
        if model_shapes is None:
            continue
        shape = model_shapes.get(weight)
        if shape is None:
            raise WeightSyncError(f"{engine}: adapter tensor {name!r} adapts {weight!r}, which is not a weight of the "
                                  f"model this engine serves")
        want = (rank, shape[1]) if m.group(2) == "A" else (shape[0], rank)
        if tuple(t.shape) != want:
            raise WeightSyncError(f"{engine}: adapter tensor {name!r} has shape {list(t.shape)}; a rank-{rank} "
                                  f"factor of {weight!r} {list(shape)} has {list(want)}")
