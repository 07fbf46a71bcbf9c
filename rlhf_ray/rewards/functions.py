"""Rule rewards named by import path, and the check every reward's answer goes through.

Shared by the reward actor (rlhf_ray.roles.reward) and the reward service (rlhf_ray.rewards.client),
which serves the same functions over HTTP and checks its answers the same way; neither imports the other.
"""

from __future__ import annotations

import math
from typing import Callable

import torch

from rlhf_ray.config.imports import import_module_of

RewardFn = Callable[[list[str], list[str], list[str]], list[float]]


def import_reward_function(path: str) -> RewardFn:
    """'package.module:function' → the function; errors name the path and what is wrong."""
    module, attr = import_module_of(path, "reward.function", "function")
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward.function={path!r}: module {module.__name__!r} has no function {attr!r}")
    return fn


def check_scores(scores, n: int, source: str) -> torch.Tensor:
    """One finite number per sample, or an error that says which sample and what came back."""
    if len(scores) != n:
        raise ValueError(f"{source} returned {len(scores)} scores for {n} samples")
    out = torch.tensor([float(s) for s in scores], dtype=torch.float32)
    bad = [i for i, s in enumerate(out.tolist()) if not math.isfinite(s)]
    if bad:
        raise ValueError(f"{source} returned non-finite scores at samples {bad[:10]}: {out[bad[:10]].tolist()}")
    return out
