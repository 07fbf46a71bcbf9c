"""The learner's side of a sync: each bucket to every engine by the configured transport.

    object_store  one ``ray.put`` of the bucket (numpy views: rlhf_ray.models.wire) that every engine
                  pulls through Ray's object manager; one remote call per engine per bucket.
    collective    one remote call per engine per bucket carrying the manifest only, then one
                  broadcast of the bucket's flat buffer over the weight group (rlhf_ray.sync.group),
                  which every engine's workers join in their own processes.
"""

from __future__ import annotations

import time

import ray

from rlhf_ray.models.wire import to_wire
from rlhf_ray.sync.buckets import flatten
from rlhf_ray.sync.group import WeightGroup
from rlhf_ray.sync.manifest import BucketManifest


class BucketSender:
    def __init__(self, engines: list, version: int, group: WeightGroup | None, checksum: bool):
        """``group``: the weight group for a broadcast, None for the object store."""
        self.engines, self.version, self.group, self.checksum = engines, version, group, checksum
        self.pending: list[ray.ObjectRef] = []
        self.buckets = 0
        self.bytes = 0
        self.seconds = {"prepare": 0.0, "transfer": 0.0, "wait": 0.0}  # manifest and buffer; put or broadcast; engines

    def send(self, bucket: list, last: bool) -> None:
        start = time.perf_counter()
        manifest = BucketManifest.build(self.version, self.buckets, last, bucket, self.checksum)
        if self.group is None:
            wire = [(name, *to_wire(t)) for name, t in bucket]
            sent = time.perf_counter()
            ref = ray.put(wire)
            self.pending += [e.load_weights.remote(manifest, ref) for e in self.engines]
        else:
            buffer = flatten(bucket, manifest)
            sent = time.perf_counter()
            # Engines run their calls in order: each is waiting in this bucket's broadcast when it comes.
            self.pending += [e.receive_weights.remote(manifest) for e in self.engines]
            self.group.broadcast(buffer)
        self.seconds["prepare"] += sent - start
        self.seconds["transfer"] += time.perf_counter() - sent
        self.buckets += 1
        self.bytes += manifest.nbytes

    def finish(self) -> None:
        """Until every engine has loaded every bucket (an engine's error surfaces here)."""
        start = time.perf_counter()
        ray.get(self.pending)
        self.seconds["wait"] += time.perf_counter() - start


def sync_metrics(nbytes: int, buckets: int, seconds: float, stages: dict[str, float]) -> dict[str, float]:
    """A weight sync's metrics (docs/metrics.md): bytes, buckets, seconds, rate and each stage's seconds."""
    return {"sync/bytes": float(nbytes), "sync/buckets": float(buckets), "sync/seconds": seconds,
            "sync/bytes_per_s": nbytes / seconds if seconds else 0.0, **{f"sync/{k}_s": v for k, v in stages.items()}}
