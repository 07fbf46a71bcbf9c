"""Weights cut into buckets between layers, and a bucket as one flat byte buffer and back.

vLLM rebuilds a fused layer (q/k/v into qkv_proj, gate/up into gate_up_proj) from the tensors of one
load call, so a layer split across buckets would be corrupted (rlhf_ray.sync.vllm_weights): buckets
end only where a layer ends. A bucket then moves in one transfer (one object-store object, or one
broadcast of its flat buffer), never one call per parameter.
"""

from __future__ import annotations

import re
from typing import Iterable, Iterator

import torch

from rlhf_ray.sync.manifest import BucketManifest, check_bucket


def layer_of(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' → 'model.layers.3'; other names stand alone."""
    m = re.match(r"^(.*?\.layers\.\d+)\.", name)
    return m.group(1) if m else name


def layer_buckets(named: Iterable[tuple[str, torch.Tensor]], limit_bytes: float) -> Iterator[tuple[list, bool]]:
    """(bucket, last) pairs: consecutive tensors, a bucket closed at the first layer end after it holds
    ``limit_bytes``. Consumes ``named`` lazily (a ZeRO-3 gather per tensor)."""
    bucket, size = [], 0
    for name, t in named:
        if bucket and size >= limit_bytes and layer_of(name) != layer_of(bucket[-1][0]):
            yield bucket, False
            bucket, size = [], 0
        bucket.append((name, t))
        size += t.numel() * t.element_size()
    if bucket:
        yield bucket, True


def flatten(named: list[tuple[str, torch.Tensor]], manifest: BucketManifest) -> torch.Tensor:
    """The bucket as one uint8 tensor on the tensors' device, each at its manifest offset."""
    buffer = torch.zeros(manifest.nbytes, dtype=torch.uint8, device=named[0][1].device if named else "cpu")
    for (_, t), e in zip(named, manifest.entries):
        buffer[e.offset:e.offset + e.nbytes] = t.detach().contiguous().reshape(-1).view(torch.uint8)
    return buffer


def receive_bucket(group, manifest: BucketManifest, verify: bool, engine: str) -> list[tuple[str, torch.Tensor]]:
    """One bucket by broadcast over ``group`` (rlhf_ray.sync.group.WeightGroup), as (name, tensor) views
    of the received buffer, checked against its manifest (rlhf_ray.sync.manifest.check_bucket)."""
    buffer = torch.empty(manifest.nbytes, dtype=torch.uint8, device=group.device)
    group.broadcast(buffer)
    named = unflatten(buffer, manifest)
    check_bucket(manifest, named, verify, engine)
    return named


def unflatten(buffer: torch.Tensor, manifest: BucketManifest) -> list[tuple[str, torch.Tensor]]:
    """Views of ``buffer`` as the manifest's tensors (no copy)."""
    return [(e.name, buffer[e.offset:e.offset + e.nbytes].view(getattr(torch, e.dtype)).view(e.shape))
            for e in manifest.entries]
