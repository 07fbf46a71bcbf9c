"""Weight sync pieces (rlhf_ray.sync): layer-aligned buckets, the flat buffer, manifests and the
engine's receipt, and the weight group's broadcast between processes; against plain loops."""

from __future__ import annotations

import multiprocessing as mp

import pytest
import torch

from rlhf_ray.cluster.rendezvous import bind
from rlhf_ray.sync.buckets import flatten, layer_buckets, layer_of, unflatten
from rlhf_ray.sync.manifest import BucketManifest, SyncReceipt, WeightSyncError, check_bucket

pytestmark = pytest.mark.unit


def _model_like(layers=4, width=8):
    named = [("model.embed_tokens.weight", torch.randn(32, width))]
    for i in range(layers):
        for part in ("self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "mlp.gate_proj", "mlp.up_proj"):
            named.append((f"model.layers.{i}.{part}.weight", torch.randn(width, width)))
    named.append(("model.norm.weight", torch.randn(width)))
    return named


@pytest.mark.parametrize("limit", [1, 300, 1000, 2**30])
def test_buckets_close_at_the_first_layer_end_past_the_limit(limit):
    named = _model_like()
    buckets = list(layer_buckets(iter(named), limit))
    # Reference: walk the tensors, closing a bucket when it holds >= limit bytes and the next tensor
    # starts another layer.
    expected, current = [], []
    for i, (name, t) in enumerate(named):
        current.append(name)
        size = sum(dict(named)[n].numel() * 4 for n in current)
        nxt = named[i + 1][0] if i + 1 < len(named) else None
        if nxt is not None and size >= limit and layer_of(nxt) != layer_of(name):
            expected.append(current)
            current = []
    expected.append(current)
    assert [[n for n, _ in b] for b, _ in buckets] == expected
    assert [last for _, last in buckets] == [False] * (len(expected) - 1) + [True]
    for bucket, _ in buckets:  # no layer is split across buckets
        layers = [layer_of(n) for n, _ in bucket]
        assert all(layer_of(n) not in layers for other, _ in buckets if other is not bucket for n, _ in other)


def test_flat_buffer_round_trip_keeps_every_dtype():
    named = [("a", torch.randn(3, 5)), ("b", torch.randn(7).to(torch.bfloat16)), ("c", torch.arange(4))]
    manifest = BucketManifest.build(3, 0, True, named)
    buffer = flatten(named, manifest)
    # a at 0 (60 bytes), b at 64 (14), c at 80 (32): each at a multiple of 16, to be viewed as its dtype
    assert [e.offset for e in manifest.entries] == [0, 64, 80]
    assert buffer.dtype == torch.uint8 and buffer.numel() == manifest.nbytes == 112
    back = unflatten(buffer, manifest)
    assert [n for n, _ in back] == ["a", "b", "c"]
    for (_, want), (_, got) in zip(named, back):
        assert got.dtype == want.dtype and torch.equal(got, want)
    check_bucket(manifest, back, verify=True, engine="e")
    assert BucketManifest.from_dict(manifest.to_dict()) == manifest


def test_manifest_names_the_wrong_or_missing_tensor():
    named = [("a", torch.randn(3, 5)), ("b", torch.randn(4))]
    manifest = BucketManifest.build(1, 0, True, named)
    with pytest.raises(WeightSyncError, match=r"rollout-0: weight sync version 1, bucket 0 lists 2 tensors but 1 "
                                              r"arrived; missing \['b'\]"):
        check_bucket(manifest, named[:1], verify=False, engine="rollout-0")
    with pytest.raises(WeightSyncError, match=r"tensor 'b' arrived as float32\[2, 2\], the manifest says float32\[4\]"):
        check_bucket(manifest, [named[0], ("b", torch.randn(2, 2))], verify=False, engine="rollout-0")
    corrupt = [named[0], ("b", named[1][1].clone())]
    corrupt[1][1][2] += 1e-3
    check_bucket(manifest, corrupt, verify=False, engine="rollout-0")  # bytes are checked only under verify
    with pytest.raises(WeightSyncError, match=r"CRC32 .* corrupted in transit; the bucket holds \['a', 'b'\]"):
        check_bucket(manifest, corrupt, verify=True, engine="rollout-0")


def test_receipt_checks_order_model_and_completeness():
    model = {"a": (3, 5), "b": (4,), "lm_head.weight": (9, 9), "x.rotary_emb.inv_freq": (2,)}
    first = BucketManifest.build(1, 0, False, [("a", torch.zeros(3, 5))])
    second = BucketManifest.build(1, 1, True, [("b", torch.zeros(4))])
    receipt = SyncReceipt("rollout-1", model, tied_head=True)
    with pytest.raises(WeightSyncError, match="weight sync version 1, bucket 1 arrived, expected bucket 0"):
        receipt.accept(second)
    receipt.accept(first)
    receipt.accept(second)
    receipt.finish()  # the tied head and a rotary buffer are never sent

    receipt = SyncReceipt("rollout-1", model, tied_head=False)
    receipt.accept(first)
    receipt.accept(BucketManifest.build(1, 1, True, [("b", torch.zeros(4))]))
    with pytest.raises(WeightSyncError, match=r"rollout-1: weight sync version 1 ended without 1 of the model's "
                                              r"weights: \['lm_head.weight'\]"):
        receipt.finish()
    with pytest.raises(WeightSyncError, match=r"'b' has shape \[5\], the engine's model has \[4\]"):
        SyncReceipt("r", model, True).accept(BucketManifest.build(2, 0, True, [("b", torch.zeros(5))]))
    with pytest.raises(WeightSyncError, match=r"'c' is not a weight of the model this engine serves"):
        SyncReceipt("r", model, True).accept(BucketManifest.build(2, 0, True, [("c", torch.zeros(5))]))


CHUNK = 2**20 + 3  # the chain's chunks: several per buffer, the last one short


def _receiver(rank, world, port, nbytes, out):
    from rlhf_ray.sync.group import WeightGroup

    group = WeightGroup("127.0.0.1", port, rank, world, 60, "127.0.0.1", chunk_bytes=CHUNK)
    buffer = torch.zeros(nbytes, dtype=torch.uint8)
    group.broadcast(buffer)
    out.put((rank, int(buffer.to(torch.int64).sum()), int(buffer[-1])))


def test_weight_group_broadcasts_to_every_member_across_processes():
    """Three receiver processes and this one (rank 0, the source) in a gloo group that is not
    torch.distributed's default group; the bytes go down the chain 0 → 1 → 2 → 3 in four chunks."""
    world, nbytes = 4, 3 * 2**20 + 5
    held = bind("127.0.0.1")
    port = held.getsockname()[1]
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    procs = [ctx.Process(target=_receiver, args=(r, world, port, nbytes, out)) for r in range(1, world)]
    for p in procs:
        p.start()
    from rlhf_ray.sync.group import WeightGroup

    group = WeightGroup("127.0.0.1", port, 0, world, 60, "127.0.0.1", held, chunk_bytes=CHUNK)
    payload = torch.randint(0, 256, (nbytes,), dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    group.broadcast(payload)
    got = sorted(out.get(timeout=60) for _ in procs)
    for p in procs:
        p.join(timeout=30)
    assert not torch.distributed.is_initialized()
    assert got == [(r, int(payload.to(torch.int64).sum()), int(payload[-1])) for r in range(1, world)]
