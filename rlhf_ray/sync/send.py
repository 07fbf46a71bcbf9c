"""The learner's side of a sync: each bucket to every engine by the configured transport.

    object_store  one ``ray.put`` of the bucket (numpy views: rlhf_ray.models.wire) that every engine
                  pulls through Ray's object manager; one remote call per engine per bucket.
    collective    one remote call per engine per bucket carrying the manifest only, then one
                  broadcast of the bucket's flat buffer over the weight group (rlhf_ray.sync.group),
                  which every engine's workers join in their own processes.
"""

from __future__ import annotations

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

    def send(self, bucket: list, last: bool) -> None:
        manifest = BucketManifest.build(self.version, self.buckets, last, bucket, self.checksum)
        if self.group is None:
            ref = ray.put([(name, *to_wire(t)) for name, t in bucket])
            self.pending += [e.load_weights.remote(manifest, ref) for e in self.engines]
        else:
            # Engines run their calls in order: each is waiting in this bucket's broadcast when it comes.
            self.pending += [e.receive_weights.remote(manifest) for e in self.engines]
            self.group.broadcast(flatten(bucket, manifest))
        self.buckets += 1
        self.bytes += manifest.nbytes

    def finish(self) -> None:
        """Until every engine has loaded every bucket (an engine's error surfaces here)."""
        ray.get(self.pending)
