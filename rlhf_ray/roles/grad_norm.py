"""The gradient norm a DeepSpeed step is about to apply, read from the gradients themselves.

DeepSpeed's own figure (``engine.get_global_grad_norm()``) is not computed in every set-up (on CPU
it stays None, which was logged as 0.0): a metric that lies. This one is taken from the parameters'
gradients between the backward and the step of an accumulation boundary, for ZeRO stages 0-3.
"""

from __future__ import annotations

import torch


def step_grad_norm(engine) -> float:
    """The L2 norm of the gradient ``engine.step()`` is about to apply, before clipping and unscaled:
    call it between the backward and the step of an accumulation boundary, on every rank (it is
    collective under ZeRO). Each rank sums the squares of what it holds, and only partitioned
    gradients are added up over ranks (one all-reduce of a scalar): ZeRO-3 keeps each parameter's
    gradient partitioned over the ranks, ZeRO-1/2 a slice of the flattened gradients (fragments of
    some parameters), and without ZeRO every rank holds the whole gradient, already all-reduced."""
    from deepspeed.runtime.zero.stage_1_and_2 import DeepSpeedZeroOptimizer
    from deepspeed.utils import safe_get_full_grad, safe_get_local_grad

    stage = engine.zero_optimization_stage()
    zero12 = isinstance(engine.optimizer, DeepSpeedZeroOptimizer)
    whole, part = [], []
    for p in engine.module.parameters():
        if not p.requires_grad:
            continue
        if stage == 3:
            part.append(safe_get_local_grad(p))
        elif zero12:
            if p._hp_mapping is not None:  # None: no slice of this parameter lies on this rank
                part.append(p._hp_mapping.get_lp_grad_fragment(p._index_in_param_group))
        else:  # no ZeRO (or a DeepSpeed optimizer that assembles it): whole; None only when p had no gradient
            g = safe_get_full_grad(p)
            if g is not None:
                whole.append(g)
    sq = _squares(whole, engine.device)
    if stage == 3 or zero12:
        shards = _squares(part, engine.device)
        torch.distributed.all_reduce(shards, group=engine.optimizer.dp_process_group)  # the ranks it is split over
        sq = sq + shards
    loss_scale = float(getattr(engine.optimizer, "loss_scale", None) or 1.0)  # fp16's scaled gradients
    return float(sq.sqrt()) / loss_scale


def _squares(grads: list[torch.Tensor], device) -> torch.Tensor:
    """Σ g² over the tensors, as a float64 scalar on ``device`` (offloaded gradients may sit on CPU)."""
    total = torch.zeros((), dtype=torch.float64, device=device)
    for g in grads:
        total += torch.linalg.vector_norm(g, dtype=torch.float32).to(device, torch.float64) ** 2
    return total
