"""Loss aggregation over a whole optimiser step, whatever its micro-batches and data-parallel ranks.

An optimiser step accumulates gradients over micro-batches and averages them over ranks. If each
micro-batch took its own mean, every micro-batch would weigh the same whatever its token count:
lengths [9, 1 | 2, 1] with loss 1 on the first micro-batch's tokens and 0 on the second's would give
the optimiser 0.5 where the documented token mean is 10/13 = 0.769. So each micro-batch divides its
*sum* by the step's counts (a ``Normalizer``: tokens, sequences and units of every micro-batch on
every rank); the trainer then undoes the engine's averaging (× accumulation steps × ranks), and the
accumulated gradient is exactly the gradient of the documented mean over the step.

Aggregations (``agg``) of a per-token loss l over response tokens (mask m), N tokens, S sequences:

    token-mean               Σ l·m / N                    every token weighs the same (PPO; CISPO)
    seq-mean-token-mean      Σ_i (Σ_t l·m / |y_i|) / S    every sequence weighs the same (GRPO paper; GSPO)
    seq-mean-token-sum-norm  Σ l·m / (S · L)              L a constant (the generation budget): no
                                                          length bias either way (Dr. GRPO, Liu et al. 2025)

All counts are of mask entries, never lengths: in a multi-turn response the observation tokens between
the policy's turns are masked and count nowhere, so |y_i| is row i's number of policy tokens. S counts
the rows with at least one: a row without any is left out, where Dr. GRPO's 1/G counts all G (k empty
rows among B scale the step by B/(B - k); docs/methods/online_rl.md). The trainer's L is the longest
response a rollout returns: rollout.max_new_tokens, or max(that, env.max_total_tokens) with an environment.
"""
from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from .masked import masked_mean, masked_sum

AGGREGATIONS = ("token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm")


@dataclass(frozen=True)
class Normalizer:
    """The denominators of one optimiser step's loss, counted over all its micro-batches and ranks."""

    tokens: float         # valid response tokens
    sequences: float      # rows with at least one response token (a sequence mean skips empty rows)
    units: float          # what a per-unit loss averages over: rows, or pairs of rows for preference losses
    horizon: float = 1.0  # L of seq-mean-token-sum-norm: the longest response the engine may generate

    @classmethod
    def of(cls, mask: Tensor, rows_per_unit: int = 1, horizon: float | None = None) -> "Normalizer":
        """This batch's own counts (all there is when the batch is the whole step)."""
        return cls(float((mask != 0).sum()), float((mask != 0).any(dim=-1).sum()), mask.shape[0] / rows_per_unit,
                   float(mask.shape[-1] if horizon is None else horizon))

    def __add__(self, other: "Normalizer") -> "Normalizer":
        return Normalizer(self.tokens + other.tokens, self.sequences + other.sequences, self.units + other.units,
                          self.horizon)


def aggregate_loss(loss_tok: Tensor, mask: Tensor, agg: str = "token-mean", norm: Normalizer | None = None) -> Tensor:
    """This micro-batch's share of the step's ``agg`` of a [B, T] per-token loss (see the module doc);
    with ``norm=None`` the batch is the whole step."""
    norm = Normalizer.of(mask) if norm is None else norm
    if agg == "token-mean":
        return masked_sum(loss_tok, mask) / max(norm.tokens, 1.0)
    if agg == "seq-mean-token-mean":
        return masked_mean(loss_tok, mask, dim=-1).sum() / max(norm.sequences, 1.0)  # an empty row's mean is 0
    if agg == "seq-mean-token-sum-norm":
        return masked_sum(loss_tok, mask) / max(norm.sequences * norm.horizon, 1.0)
    raise ValueError(f"unknown loss aggregation '{agg}'; choose one of: {', '.join(sorted(AGGREGATIONS))}")


def mean_over_units(losses: Tensor, norm: Normalizer | None = None) -> Tensor:
    """This micro-batch's share of the step's mean of per-unit losses [n] (a pair's, a completion's)."""
    return losses.sum() / (max(norm.units, 1.0) if norm is not None else max(len(losses), 1))

