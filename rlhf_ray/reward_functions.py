"""Rule rewards named by import path, and the check every reward's answer goes through.

Shared by the reward actor (rlhf_ray.roles.reward) and the reward service (rlhf_ray.rewards_http),
which serves the same functions over HTTP and checks its answers the same way; neither imports the other.
"""

from __future__ import annotations

import importlib
import math
import os
import sys
from typing import Callable

import torch

RewardFn = Callable[[list[str], list[str], list[str]], list[float]]


def import_reward_function(path: str) -> RewardFn:
    """'package.module:function' → the function; errors name the path and what is wrong. Modules are
    found from the working directory too, as `python -m` finds them (the `rlhf-ray` script's own
    sys.path starts at its bin/ folder instead)."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward.function={path!r} must look like 'package.module:function'")
    if os.getcwd() not in sys.path:
        sys.path.append(os.getcwd())
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward.function={path!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward.function={path!r}: module {module_name!r} has no function {attr!r}")
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
