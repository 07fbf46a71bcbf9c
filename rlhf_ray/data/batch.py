"""Trajectory batches: how samples travel between the controller and the role actors.

A batch is a plain ``dict[str, Tensor]`` whose tensors share the batch dimension. Sequences are laid
out as ``[left-padded prompt | right-padded response]`` so every row's response starts at the same
column P: per-token response tensors are then simple ``[B, R]`` slices, with no per-row indexing.

The pad token of our models equals their end token, so masks come from lengths, never from
``ids != pad_id`` (that would drop the end token the policy must learn to emit).
"""

from __future__ import annotations

from typing import Sequence

import torch

from rlhf_ray.algos.masked import mask_from_lengths

Batch = dict[str, torch.Tensor]


def build_batch(prompts: Sequence[Sequence[int]], responses: Sequence[Sequence[int]], pad_id: int,
                rollout_logprobs: Sequence[Sequence[float]] | None = None,
                policy_masks: Sequence[Sequence[int]] | None = None) -> Batch:
    """Pack token-id lists into the ``[prompt | response]`` layout.

    Keys: input_ids, attention_mask, position_ids [B, P+R]; response_ids, response_mask [B, R];
    prompt_lengths, response_lengths [B]; rollout_logprobs [B, R] when given.

    ``policy_masks`` (one 0/1 list per row, as long as its response) marks the tokens the policy
    generated; a multi-turn response also holds observation tokens (tool output) between its turns,
    which every model still reads but no loss may train on. response_mask is then the length mask
    AND the policy mask, no longer a prefix mask; the lengths still bound each row.
    """
    if len(prompts) != len(responses):
        raise ValueError(f"{len(prompts)} prompts but {len(responses)} responses")
    if policy_masks is not None:
        if len(policy_masks) != len(responses):
            raise ValueError(f"{len(policy_masks)} policy masks but {len(responses)} responses")
        for i, (pm, r) in enumerate(zip(policy_masks, responses)):
            if len(pm) != len(r):
                raise ValueError(f"row {i}: policy mask of {len(pm)} entries for a response of {len(r)} tokens")
    b = len(prompts)
    p_len = torch.tensor([len(p) for p in prompts])
    r_len = torch.tensor([len(r) for r in responses])
    P, R = int(p_len.max()), max(int(r_len.max()), 1)
    ids = torch.full((b, P + R), pad_id, dtype=torch.long)
    for i, (p, r) in enumerate(zip(prompts, responses)):
        ids[i, P - len(p):P] = torch.tensor(p, dtype=torch.long)
        ids[i, P:P + len(r)] = torch.tensor(r, dtype=torch.long)
    col = torch.arange(P + R)
    attn = ((col >= P - p_len[:, None]) & (col < P + r_len[:, None])).long()
    batch: Batch = {
        "input_ids": ids,
        "attention_mask": attn,
        # Left padding shifts tokens right; positions must still count from the first real token.
        "position_ids": (attn.cumsum(-1) - 1).clamp(min=0),
        "response_ids": ids[:, P:],
        "response_mask": mask_from_lengths(r_len, R),
        "prompt_lengths": p_len,
        "response_lengths": r_len,
    }
    if policy_masks is not None:
        policy = torch.zeros(b, R, dtype=torch.bool)
        for i, pm in enumerate(policy_masks):
            policy[i, :len(pm)] = torch.tensor(pm, dtype=torch.long) != 0
        batch["response_mask"] = batch["response_mask"] * policy
    if rollout_logprobs is not None:
        lp = torch.zeros(b, R)
        for i, row in enumerate(rollout_logprobs):
            lp[i, :len(row)] = torch.tensor(row, dtype=torch.float32)
        batch["rollout_logprobs"] = lp
    return batch


def batch_size(batch: Batch) -> int:
    return next(iter(batch.values())).shape[0]


def split_batch(batch: Batch, n: int) -> list[Batch]:
    """n contiguous shards, sizes differing by at most one; order is kept so concat undoes it."""
    bounds = [batch_size(batch) * i // n for i in range(n + 1)]
    return [{k: v[bounds[i]:bounds[i + 1]] for k, v in batch.items()} for i in range(n)]


def concat_batches(shards: Sequence[Batch]) -> Batch:
    keys = shards[0].keys()
    return {k: torch.cat([s[k] for s in shards]) for k in keys}


def select(batch: Batch, index: torch.Tensor) -> Batch:
    return {k: v[index] for k, v in batch.items()}


SEQUENCE_KEYS = ("input_ids", "attention_mask", "position_ids")


def micro_batches(batch: Batch, size: int):
    """Consecutive slices of ``size`` rows, each without the columns that are padding in all its rows."""
    n = batch_size(batch)
    return sliced(batch, [*range(0, n, size), n])


def sliced(batch: Batch, bounds: list[int]):
    """The rows between consecutive ``bounds``, each slice trimmed of its all-padding columns."""
    for start, end in zip(bounds, bounds[1:]):
        yield trim_padding({k: v[start:end] for k, v in batch.items()})


def trim_padding(batch: Batch) -> Batch:
    """The same rows without the prompt columns left of the longest prompt and the response columns
    right of the longest response. A micro-batch cut from a large batch is padded to the whole
    batch's longest sequence; every forward pass would pay for those columns. Response-wide tensors
    ([B, R]) are cut to the new R; results computed on them are padded back by the caller."""
    if "prompt_lengths" not in batch:
        return batch
    R = batch["response_ids"].shape[1]
    P = batch["input_ids"].shape[1] - R
    p, r = int(batch["prompt_lengths"].max()), max(int(batch["response_lengths"].max()), 1)
    if p == P and r == R:
        return batch
    out = {}
    for k, v in batch.items():
        if k in SEQUENCE_KEYS:
            out[k] = v[:, P - p:P + r]
        elif v.dim() >= 2 and v.shape[1] == R:
            out[k] = v[:, :r]
        else:
            out[k] = v
    return out


def token_budget_bounds(prompt_lengths: list[int], response_lengths: list[int], max_tokens: int) -> list[int]:
    """Cut points of consecutive micro-batches over length-sorted rows, each as many rows as fit
    ``max_tokens`` counted as the trimmed micro-batch holds them: rows × (longest prompt + longest
    response). A row longer than the budget goes alone."""
    bounds, start, p_max, r_max = [0], 0, 0, 0
    for i, (p, r) in enumerate(zip(prompt_lengths, response_lengths)):
        r = max(r, 1)  # a trimmed batch keeps at least one response column
        p_max, r_max = max(p_max, p), max(r_max, r)
        if i > start and (i - start + 1) * (p_max + r_max) > max_tokens:
            bounds.append(i)
            start, p_max, r_max = i, p, r
    bounds.append(len(prompt_lengths))
    return bounds


def map_micro_batches(batch: Batch, size: int, fn, per_token: bool, max_tokens: int = 0) -> torch.Tensor:
    """``fn(micro_batch) -> Tensor`` over the rows sorted by length, so each micro-batch holds
    sequences of similar length and trimming leaves little padding; results come back in the
    batch's row order (per-token results padded back to the batch's response width). Micro-batches
    hold ``size`` rows, or with ``max_tokens`` as many rows as fit that many tokens."""
    order = torch.argsort(batch["prompt_lengths"] + batch["response_lengths"], stable=True)
    width = batch["response_ids"].shape[1]
    ordered = select(batch, order)
    if max_tokens:
        parts = sliced(ordered, token_budget_bounds(ordered["prompt_lengths"].tolist(),
                                                    ordered["response_lengths"].tolist(), max_tokens))
    else:
        parts = micro_batches(ordered, size)
    outs = []
    for mb in parts:
        y = fn(mb).cpu()
        outs.append(torch.nn.functional.pad(y, (0, width - y.shape[1])) if per_token else y)
    out = torch.cat(outs)
    result = torch.empty_like(out)
    result[order] = out
    return result


def split_list(items: Sequence, n: int) -> list[list]:
    """Same shard bounds as split_batch, for per-sample lists that travel beside a batch."""
    bounds = [len(items) * i // n for i in range(n + 1)]
    return [list(items[bounds[i]:bounds[i + 1]]) for i in range(n)]
