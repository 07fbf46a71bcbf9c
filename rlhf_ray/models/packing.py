"""Sequence packing: several sequences share a row, so a forward pass computes real tokens only.

The padded layout (rlhf_ray.data.batch) gives every row the micro-batch's longest prompt and longest
response; on HH-style data a third of those columns are padding. Packing lays each sequence's real
tokens end to end in rows as long as the micro-batch's longest sequence (first-fit decreasing), with
position ids restarting at 0 for every sequence and no attention mask: transformers then builds a
block-diagonal causal mask from the position ids (sdpa/eager/flex) or runs varlen flash attention,
so no token sees another sequence. Rows no longer than the longest sequence keep the attention cost
at most the padded layout's.

Not every model honours packed position ids (a custom attention, a model that ignores position ids),
so rlhf_ray.models.packing_check checks a model once, on three short sequences, against the padded forward.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from rlhf_ray.data.batch import Batch


@dataclass
class PackedLayout:
    input_ids: torch.Tensor      # [bins, C]
    position_ids: torch.Tensor   # [bins, C], restarting at 0 for every sequence (and for the tail)
    src_bin: torch.Tensor        # [N]: where the hidden state predicting each response token sits
    src_col: torch.Tensor        # [N]
    targets: torch.Tensor        # [N]: the response token predicted there
    dst_row: torch.Tensor        # [N]: where its log-prob goes in the padded [B, R] layout
    dst_col: torch.Tensor        # [N]
    last_bin: torch.Tensor       # [B]: where each row's last real token sits (sequence scores)
    last_col: torch.Tensor       # [B]

    @property
    def tokens(self) -> int:
        return self.input_ids.numel()

    def model_inputs(self, device) -> dict:
        """Keyword arguments of the packed forward: no attention mask, so transformers derives the
        block-diagonal causal mask from the restarting position ids."""
        return {"input_ids": self.input_ids.to(device), "position_ids": self.position_ids.to(device),
                "attention_mask": None}


def first_fit_decreasing(lengths: list[int], capacity: int) -> list[list[int]]:
    """Indices of ``lengths`` grouped into bins of total length <= capacity (longest first)."""
    bins: list[list[int]] = []
    room: list[int] = []
    for i in sorted(range(len(lengths)), key=lambda i: -lengths[i]):
        for b, free in enumerate(room):
            if lengths[i] <= free:
                bins[b].append(i)
                room[b] -= lengths[i]
                break
        else:
            if lengths[i] > capacity:
                raise ValueError(f"sequence of {lengths[i]} tokens does not fit a packed row of {capacity}")
            bins.append([i])
            room.append(capacity - lengths[i])
    return bins


def pack(batch: Batch, pad_id: int = 0) -> PackedLayout:
    """The packed layout of a ``[left-padded prompt | right-padded response]`` batch."""
    ids = batch["input_ids"]
    R = batch["response_ids"].shape[1]
    P = ids.shape[1] - R
    p_len, r_len = batch["prompt_lengths"].tolist(), batch["response_lengths"].tolist()
    if min(p_len) < 1:
        raise ValueError("packing needs at least one prompt token per row (it predicts the first response token)")
    lengths = [p + r for p, r in zip(p_len, r_len)]
    capacity = max(lengths)
    bins = first_fit_decreasing(lengths, capacity)
    input_ids = torch.full((len(bins), capacity), pad_id, dtype=ids.dtype)
    positions = torch.zeros((len(bins), capacity), dtype=torch.long)
    src_bin, src_col, dst_row, dst_col = [], [], [], []
    last_bin, last_col = torch.zeros(len(lengths), dtype=torch.long), torch.zeros(len(lengths), dtype=torch.long)
    for b, rows in enumerate(bins):
        offset = 0
        for i in rows:
            p, r, n = p_len[i], r_len[i], lengths[i]
            input_ids[b, offset:offset + n] = ids[i, P - p:P + r]
            positions[b, offset:offset + n] = torch.arange(n)
            # Response token t is predicted by the hidden state one column before it.
            src_bin.append(torch.full((r,), b))
            src_col.append(torch.arange(offset + p - 1, offset + p - 1 + r))
            dst_row.append(torch.full((r,), i))
            dst_col.append(torch.arange(r))
            last_bin[i], last_col[i] = b, offset + n - 1
            offset += n
        positions[b, offset:] = torch.arange(capacity - offset)  # the tail: a sequence of its own
    cat = (lambda xs: torch.cat(xs)) if src_bin else (lambda xs: torch.zeros(0, dtype=torch.long))
    dst_row_t, dst_col_t = cat(dst_row), cat(dst_col)
    return PackedLayout(input_ids, positions, cat(src_bin), cat(src_col),
                        batch["response_ids"][dst_row_t, dst_col_t], dst_row_t, dst_col_t, last_bin, last_col)


def hf_model(model: nn.Module) -> nn.Module:
    """The transformers model inside a DeepSpeed engine and a PEFT wrapper (LoRA adapts its layers in place)."""
    module = getattr(model, "module", model)
    return module.get_base_model() if hasattr(module, "get_base_model") else module


def packed_response_logits(model: nn.Module, layout: PackedLayout, device) -> torch.Tensor:
    """Logits [N, V] at the positions predicting the response tokens, from one packed forward.

    The model runs whole (through a DeepSpeed engine's forward when given one, so ZeRO-3's hooks
    run as usual) with the LM head on one column; the backbone's last hidden state is caught on its
    way out and only the N response positions go through the LM head."""
    module = hf_model(model)
    backbone = getattr(module, module.base_model_prefix)
    caught = {}

    def catch(_mod, _inputs, output):
        caught["h"] = output[0] if isinstance(output, tuple) else output.last_hidden_state

    handle = backbone.register_forward_hook(catch)
    try:
        model(**layout.model_inputs(device), use_cache=False, logits_to_keep=1)
    finally:
        handle.remove()
    hidden = caught["h"][layout.src_bin.to(device), layout.src_col.to(device)]
    return module.get_output_embeddings()(hidden)


def unpack(values: torch.Tensor, layout: PackedLayout, shape: tuple[int, int]) -> torch.Tensor:
    """Per-token values [N] back into the padded [B, R] layout (zeros elsewhere)."""
    out = values.new_zeros(shape)
    return out.index_put((layout.dst_row.to(values.device), layout.dst_col.to(values.device)), values)
