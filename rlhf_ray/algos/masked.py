"""Masked reductions and log-prob helpers over batch-first [B, T] tensors.

``mask`` is 1 for the response tokens that count and 0 elsewhere (bool or float):
padding, and in multi-turn responses the observation tokens between the policy's
turns, so a mask need not be a prefix. Every reduction here counts mask entries,
never lengths. Padded entries of ``x`` may hold garbage (inf / NaN log-probs past EOS), so
every reduction *selects* with the mask instead of only multiplying by it:
``nan * 0`` is still NaN. That keeps values finite; for gradients the objectives also select their
inputs before computing with them (``select_valid``).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def select_valid(mask: Tensor, *xs: Optional[Tensor]) -> tuple[Optional[Tensor], ...]:
    """Each x with 0 where the mask is 0 (None passes through), for an objective to call on its inputs
    before anything else.

    Selecting protects a reduction's value, not the gradient of what came before it: torch.where
    sends exactly 0 to the entries it drops, but an operation applied earlier backpropagates that 0
    times its own derivative there, and 0 · inf (exp of an inf log-ratio, a product with a NaN
    advantage, a square) is NaN. Selected first, padding holds zeros, whose derivatives are finite,
    and the gradient there is exactly 0 (the "double where" of masked autograd).
    """
    keep = mask != 0
    return tuple(None if x is None else torch.where(keep, x, x.new_zeros(())) for x in xs)


def _select(x: Tensor, mask: Tensor) -> tuple[Tensor, Tensor]:
    m = mask.to(x.dtype)
    return torch.where(mask != 0, x, torch.zeros_like(x)) * m, m


def masked_sum(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """sum_i x_i * m_i, over ``dim`` (all entries when None)."""
    xm, _ = _select(x, mask)
    return xm.sum() if dim is None else xm.sum(dim)


def masked_mean(x: Tensor, mask: Tensor, dim: Optional[int] = None) -> Tensor:
    """sum_i x_i m_i / sum_i m_i; 0 (not NaN) where the mask is all zero."""
    xm, m = _select(x, mask)
    num = xm.sum() if dim is None else xm.sum(dim)
    cnt = m.sum() if dim is None else m.sum(dim)
    # An empty mask has num == 0 too, so dividing by a clamped count yields 0.
    return num / cnt.clamp(min=torch.finfo(num.dtype).tiny)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance over masked entries: sum m (x - mu)^2 / (N - 1) (or / N).

    With N <= 1 valid entries Bessel's correction is undefined; the biased
    value (0) is returned rather than inf / NaN.
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.to(var.dtype).sum()
        var = torch.where(n > 1, var * n / (n - 1).clamp(min=1), var)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """(x - mu) / sqrt(var + eps) with mu, var (unbiased) over masked entries.

    With ``shift_mean=False`` the mean is added back (only the scale changes).
    Padded entries are 0 in the output so they cannot leak into later sums.
    """
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=True)
    out = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        out = out + mean
    return torch.where(mask != 0, out, torch.zeros_like(out))


def mask_from_lengths(lengths: Tensor, max_len: int) -> Tensor:
    """mask[b, t] = 1.0 if t < lengths[b] else 0.0, shape [B, max_len].

    Our tokenizers use the EOS id as the pad id, so ``ids != pad_id`` would
    drop the real, final EOS token (the one the reward model and the policy
    gradient must see). Masks therefore always come from lengths.
    """
    lengths = torch.as_tensor(lengths)
    if lengths.dim() != 1:
        raise ValueError(f"lengths must be 1-D [B], got shape {tuple(lengths.shape)}")
    if lengths.numel() and (int(lengths.min()) < 0 or int(lengths.max()) > max_len):
        raise ValueError(f"lengths must lie in [0, {max_len}], got {lengths.tolist()}")
    pos = torch.arange(max_len, device=lengths.device)
    return (pos.unsqueeze(0) < lengths.unsqueeze(1)).float()


def _gather_logprobs(z: Tensor, labels: Tensor) -> Tensor:
    picked = z.gather(-1, labels.unsqueeze(-1)).squeeze(-1)
    return picked - torch.logsumexp(z, dim=-1)


def _entropy(z: Tensor) -> Tensor:
    return torch.logsumexp(z, dim=-1) - (torch.softmax(z, dim=-1) * z).sum(-1)


def _low_precision(logits: Tensor) -> bool:
    # bf16/fp16 logsumexp over a large vocab loses several bits; upcasting the
    # whole [B, T, V] tensor would double peak memory, so callers upcast per row.
    return logits.dtype not in (torch.float32, torch.float64)


def logprobs_from_logits(logits: Tensor, labels: Tensor) -> Tensor:
    """log p(label) = z[label] - logsumexp(z), shape [B, T] from [B, T, V].

    Avoids materialising a full log_softmax copy of the logits. Low-precision
    logits are computed in float32, one batch row at a time.
    """
    labels = labels.long()
    if not _low_precision(logits):
        return _gather_logprobs(logits, labels)
    return torch.stack([_gather_logprobs(z.float(), l) for z, l in zip(logits, labels)])


def entropy_from_logits(logits: Tensor) -> Tensor:
    """H = -sum_v p_v log p_v = logsumexp(z) - sum_v softmax(z)_v z_v, shape [B, T]."""
    if not _low_precision(logits):
        return _entropy(logits)
    return torch.stack([_entropy(z.float()) for z in logits])
