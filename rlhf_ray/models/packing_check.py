"""Whether a model may run packed: one check at load, packed outputs against padded ones.

Its own module because the check runs the forward passes (rlhf_ray.models.forward), which pack
through rlhf_ray.models.packing: packing itself stays below forward, and this sits above both.
"""

from __future__ import annotations

import logging

import torch
from torch import nn

from rlhf_ray.data.batch import build_batch
from rlhf_ray.models.forward import response_logprobs


def packing_matches(model: nn.Module, forward=None, atol: float = 1e-3) -> tuple[bool, float]:
    """Whether ``forward(model, batch, pack)`` ([B, R] per token or [B] per sequence; default:
    response log-probs) gives the same values packed as padded, on three short random sequences,
    two of them sharing a packed row (one forward each way, no gradient). Returns (ok, max |diff|)."""
    forward = forward or (lambda m, b, pack: response_logprobs(m, b, pack=pack)[0])
    vocab = model.get_input_embeddings().num_embeddings
    g = torch.Generator().manual_seed(0)
    # lengths 8, 4, 4: the two short rows share the second packed row
    prompts, responses = [[torch.randint(0, vocab, (n,), generator=g).tolist() for n in lens]
                          for lens in ((5, 2, 1), (3, 2, 3))]
    batch = build_batch(prompts, responses, pad_id=0)
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            padded, packed = forward(model, batch, False), forward(model, batch, True)
    finally:
        model.train(was_training)
    gap = padded - packed
    diff = float((gap[batch["response_mask"].bool()] if gap.dim() == 2 else gap).abs().max())
    return diff <= atol, diff


def use_packing(model: nn.Module, setting: str, who: str, forward=None) -> bool:
    """Resolves ``model.sequence_packing`` (auto/on/off) for one actor's model (``forward`` as in
    `packing_matches`): auto packs when the check passes and warns when it does not; on raises."""
    if setting == "off":
        return False
    ok, diff = packing_matches(model, forward)
    if ok:
        return True
    msg = (f"{who}: model.sequence_packing={setting}, but {type(model).__name__} gives other outputs packed than "
           f"padded (max difference {diff:.3g}): it does not honour packed position ids")
    if setting == "on":
        raise ValueError(msg + "; set model.sequence_packing=off (or auto)")
    logging.getLogger(__name__).warning("%s; packing is off for this model", msg)
    return False
