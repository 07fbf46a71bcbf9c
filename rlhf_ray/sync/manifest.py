"""What a weight sync says it carries, and the engine's check that it got exactly that.

Every bucket travels with a manifest: the weights version, the bucket's place in the sync (index,
last), and per tensor its name, shape, dtype and byte range; under ``sync.verify`` also a CRC32 of
the bucket's bytes in order (a pass over the weights on each side, and a copy to the host for GPU
buckets: measured 0.3-1 s per sync of SmolLM2 on this CPU, so a debug mode, on in the tests). The
engine checks each bucket against its manifest (names, shapes, dtypes and sizes always; the CRC32
under ``sync.verify``) and against its own model (every name is a weight of the model it serves,
with the model's shape), and at the last bucket that the buckets arrived in order and none is missing. A failure names the tensor, the bucket and the engine:
weights that silently never arrive, or arrive wrong, are the field's most reported RL failure.
"""

from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass

import torch

from rlhf_ray.models.wire import to_wire


ALIGN = 16  # bytes: every tensor of a flat bucket starts at a multiple (the widest dtype's size and more)


class WeightSyncError(RuntimeError):
    """A bucket that does not match its manifest or the engine's model; names what is wrong."""


@dataclass(frozen=True)
class TensorEntry:
    name: str
    shape: tuple[int, ...]
    dtype: str  # torch dtype name without "torch."
    offset: int  # byte offset in the bucket's flat buffer (a multiple of ALIGN)
    nbytes: int


@dataclass(frozen=True)
class BucketManifest:
    version: int
    index: int  # 0, 1, ... within one sync
    last: bool
    entries: tuple[TensorEntry, ...]
    nbytes: int  # of the flat buffer, alignment gaps included
    crc32: int | None  # None: not computed (outside sync.verify)

    @classmethod
    def build(cls, version: int, index: int, last: bool, named: list[tuple[str, torch.Tensor]],
              checksum: bool = True) -> "BucketManifest":
        entries, offset = [], 0
        for name, t in named:
            n = t.numel() * t.element_size()
            offset = -(-offset // ALIGN) * ALIGN  # a view of the flat buffer as this dtype needs it aligned
            entries.append(TensorEntry(name, tuple(t.shape), str(t.dtype).removeprefix("torch."), offset, n))
            offset += n
        return cls(version, index, last, tuple(entries), offset, crc32_of(t for _, t in named) if checksum else None)

    def to_dict(self) -> dict:
        """Plain types only: it crosses vLLM's msgpack hop to worker processes."""
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict) -> "BucketManifest":
        entries = tuple(TensorEntry(e["name"], tuple(e["shape"]), e["dtype"], e["offset"], e["nbytes"])
                        for e in d["entries"])
        return cls(d["version"], d["index"], d["last"], entries, d["nbytes"], d["crc32"])

    @property
    def where(self) -> str:
        return f"weight sync version {self.version}, bucket {self.index}"


def crc32_of(tensors) -> int:
    """CRC32 of the tensors' bytes one after another (alignment gaps left out)."""
    crc = 0
    for t in tensors:
        t = t.detach()
        crc = zlib.crc32(to_wire(t if t.device.type == "cpu" else t.cpu())[0].view("uint8"), crc)
    return crc


def check_bucket(manifest: BucketManifest, named: list[tuple[str, torch.Tensor]], verify: bool, engine: str) -> None:
    """``named`` (what arrived) is what ``manifest`` lists, in order; with ``verify``, byte for byte."""
    got = [n for n, _ in named]
    want = [e.name for e in manifest.entries]
    if got != want:
        missing = [n for n in want if n not in set(got)]
        extra = [n for n in got if n not in set(want)]
        raise WeightSyncError(f"{engine}: {manifest.where} lists {len(want)} tensors but {len(got)} arrived"
                              + (f"; missing {missing[:5]}" if missing else "") + (f"; not listed {extra[:5]}" if extra else "")
                              + ("" if missing or extra else "; out of order"))
    for e, (_, t) in zip(manifest.entries, named):
        dtype = str(t.dtype).removeprefix("torch.")
        if tuple(t.shape) != e.shape or dtype != e.dtype:
            raise WeightSyncError(f"{engine}: {manifest.where}: tensor {e.name!r} arrived as {dtype}{list(t.shape)}, "
                                  f"the manifest says {e.dtype}{list(e.shape)}")
    if verify:
        if manifest.crc32 is None:
            raise WeightSyncError(f"{engine}: {manifest.where} carries no checksum to verify (the sender runs "
                                  f"without sync.verify)")
        crc = crc32_of(t for _, t in named)
        if crc != manifest.crc32:
            names = [e.name for e in manifest.entries]
            raise WeightSyncError(f"{engine}: {manifest.where}: CRC32 {crc:08x} of the bytes that arrived differs from "
                                  f"the sender's {manifest.crc32:08x}: corrupted in transit; the bucket holds "
                                  f"{names[:3]}{' ...' if len(names) > 3 else ''} ({len(names)} tensors)")


class SyncReceipt:
    """One engine's record of the sync in progress: buckets in order, every name a weight of its model
    with its shape, and (on the first sync) every weight of the model delivered.

    ``model_shapes``: name → shape of the weights the engine's model folder holds (None: unknown,
    e.g. a .bin checkpoint; then only the manifests are checked)."""

    # Buffers some checkpoints carry that a trainer's parameters do not: never sent, never missing.
    NOT_PARAMETERS = ("rotary_emb.inv_freq",)

    def __init__(self, engine: str, model_shapes: dict[str, tuple[int, ...]] | None, tied_head: bool,
                 whole_first_sync: bool = True):
        """``whole_first_sync``: False where every sync carries only some weights by design (a LoRA
        learner's merged layers, sync.lora=merged)."""
        self.engine = engine
        self.whole_first_sync = whole_first_sync
        self.model_shapes = model_shapes
        self.tied_head = tied_head
        self.expected_index = 0
        self.version: int | None = None
        self.received: set[str] = set()
        self.complete_syncs = 0

    def accept(self, manifest: BucketManifest) -> None:
        """Before a bucket is loaded: its place in the sync, and its names and shapes against the model."""
        if manifest.index == 0:
            self.expected_index, self.version, self.received = 0, manifest.version, set()
        if manifest.index != self.expected_index or manifest.version != self.version:
            raise WeightSyncError(f"{self.engine}: {manifest.where} arrived, expected bucket {self.expected_index} of "
                                  f"version {self.version}: a bucket was lost or a sync interleaved with another")
        self.expected_index += 1
        for e in manifest.entries:
            if self.model_shapes is None:
                continue
            shape = self.model_shapes.get(e.name)
            if shape is None:
                raise WeightSyncError(f"{self.engine}: {manifest.where}: {e.name!r} is not a weight of the model this "
                                      f"engine serves; the learner trains another architecture than the engines load")
            if tuple(shape) != e.shape:
                raise WeightSyncError(f"{self.engine}: {manifest.where}: {e.name!r} has shape {list(e.shape)}, the "
                                      f"engine's model has {list(shape)}")
        self.received.update(e.name for e in manifest.entries)

    def finish(self) -> None:
        """After the last bucket: on the first sync, every weight of the model arrived (later syncs
        may be partial by design, e.g. adapters)."""
        if self.complete_syncs == 0 and self.model_shapes is not None and self.whole_first_sync:
            missing = sorted(n for n in self.model_shapes if n not in self.received
                             and not n.endswith(self.NOT_PARAMETERS) and not (self.tied_head and n == "lm_head.weight"))
            if missing:
                raise WeightSyncError(f"{self.engine}: weight sync version {self.version} ended without "
                                      f"{len(missing)} of the model's weights: {missing[:5]}"
                                      f"{' ...' if len(missing) > 5 else ''}")
        self.complete_syncs += 1
