"""Two-operand arithmetic questions generated in code (the default task; no data files).

Every question is an index into a finite pool of (op, a, b) triples, so sampling without
replacement gives train/eval sets with no identical question in both, and the eval set
depends only on the seed and its own size (changing n_train does not reshuffle eval).
"""
from __future__ import annotations

import bisect
import math
import random

SUPPORTED_OPS = ("+", "-", "*")


def _pool_size(op: str, width: int, allow_negative: bool) -> int:
    if op == "-" and not allow_negative:
        return width * (width + 1) // 2  # pairs with a >= b
    return width * width


def _decode(op: str, k: int, lo: int, width: int, allow_negative: bool) -> tuple[int, int]:
    if op == "-" and not allow_negative:
        a = (math.isqrt(8 * k + 1) - 1) // 2  # row of the triangular index
        b = k - a * (a + 1) // 2
    else:
        a, b = divmod(k, width)
    return lo + a, lo + b


def _apply(op: str, a: int, b: int) -> int:
    return a + b if op == "+" else a - b if op == "-" else a * b


def _nth_not_excluded(i: int, excluded_sorted: list[int]) -> int:
    """The i-th non-negative integer that is not in excluded_sorted."""
    x = i
    while True:
        nxt = i + bisect.bisect_right(excluded_sorted, x)
        if nxt == x:
            return x
        x = nxt


def make_arithmetic_split(
    n_train: int,
    n_eval: int,
    seed: int = 0,
    max_operand: int = 100,
    ops: tuple[str, ...] = ("+", "-"),
    min_operand: int = 0,
    allow_negative: bool = False,
) -> tuple[list[dict], list[dict]]:
    """Disjoint (train, eval) lists of {"prompt": "What is 59 + 63?", "answer": "122"}.

    Operands are drawn from [min_operand, max_operand]. With allow_negative=False a "-"
    question always has a >= b, which keeps the task within a small model's reach.
    """
    ops = tuple(ops)
    bad = [op for op in ops if op not in SUPPORTED_OPS]
    if bad or not ops or len(set(ops)) != len(ops):
        raise ValueError(f"ops must be distinct values from {SUPPORTED_OPS}, got {ops}")
    if max_operand < min_operand:
        raise ValueError("max_operand < min_operand")
    if n_train < 0 or n_eval < 0:
        raise ValueError("n_train and n_eval must be >= 0")
    width = max_operand - min_operand + 1
    sizes = [_pool_size(op, width, allow_negative) for op in ops]
    offsets = [0]
    for s in sizes:
        offsets.append(offsets[-1] + s)
    total = offsets[-1]
    if n_train + n_eval > total:
        raise ValueError(
            f"only {total} distinct questions exist for ops={ops}, operands in "
            f"[{min_operand}, {max_operand}]; asked for {n_train} + {n_eval}"
        )

    eval_idx = random.Random(f"arith-eval-{seed}").sample(range(total), n_eval)
    excluded = sorted(eval_idx)
    train_idx = [
        _nth_not_excluded(i, excluded)
        for i in random.Random(f"arith-train-{seed}").sample(range(total - n_eval), n_train)
    ]

    def item(index: int) -> dict:
        j = bisect.bisect_right(offsets, index) - 1
        op = ops[j]
        a, b = _decode(op, index - offsets[j], min_operand, width, allow_negative)
        return {"prompt": f"What is {a} {op} {b}?", "answer": str(_apply(op, a, b))}

    return [item(i) for i in train_idx], [item(i) for i in eval_idx]
