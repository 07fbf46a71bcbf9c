"""Synthetic preference data from scored candidates: which pair each prompt gives, and its rows.

UltraFeedback-style (Cui et al. 2023): several candidates per prompt, from one or more models, each
scored by a reward model or a rule; the best becomes ``chosen`` and the worst (or a random other
one) ``rejected`` when it is better by at least a margin. Zephyr (Tunstall et al. 2023) trains on
such pairs with DPO after SFT on distilled answers, the best candidate per prompt (``distill_rows``).
Every row says which model, seed and score produced each side, so a data set can be audited and
regenerated. Used by the ``synthesize`` command and by iterative DPO's rounds.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass(frozen=True)
class Candidate:
    text: str
    score: float
    model: str
    seed: int


def choose_pairs(scores: torch.Tensor, pairing: str, min_margin: float, seed: int) -> list[tuple[int, int, int]]:
    """(prompt, chosen, rejected) indices for each prompt of ``scores`` [prompts, candidates] that gives a pair.

    chosen: the first highest score. rejected: the last lowest (best_worst) or a seeded random other
    candidate (best_random). Kept when chosen scores strictly higher, by at least ``min_margin``: a tie
    says nothing about which answer is better."""
    if scores.dim() != 2 or scores.shape[1] < 2:
        raise ValueError(f"pairs need at least 2 candidates per prompt; got scores of shape {tuple(scores.shape)}")
    g = torch.Generator().manual_seed(seed)
    pairs = []
    for p, row in enumerate(scores.tolist()):
        best = max(range(len(row)), key=lambda j: (row[j], -j))
        if pairing == "best_worst":
            other = min(range(len(row)), key=lambda j: (row[j], -j))
        elif pairing == "best_random":
            others = [j for j in range(len(row)) if j != best]
            other = others[int(torch.randint(len(others), (1,), generator=g))]
        else:
            raise ValueError(f"unknown pairing {pairing!r}: best_worst or best_random")
        margin = row[best] - row[other]
        if margin > 0 and margin >= min_margin:
            pairs.append((p, best, other))
    return pairs


def pair_rows(prompts: list, candidates: list[list[Candidate]], pairs: list[tuple[int, int, int]], scorer: str) -> list[dict]:
    """JSONL rows (prompt/chosen/rejected, read by the DPO family as they are) with their provenance."""
    rows = []
    for p, c, r in pairs:
        chosen, rejected = candidates[p][c], candidates[p][r]
        rows.append({"prompt": prompts[p], "chosen": chosen.text, "rejected": rejected.text,
                     "chosen_score": chosen.score, "rejected_score": rejected.score,
                     "margin": chosen.score - rejected.score, "chosen_model": chosen.model,
                     "rejected_model": rejected.model, "chosen_seed": chosen.seed, "rejected_seed": rejected.seed,
                     "scorer": scorer, "candidates": len(candidates[p])})
    return rows


def distill_rows(prompts: list, candidates: list[list[Candidate]], scorer: str) -> list[dict]:
    """SFT rows (prompt/response): each prompt's best candidate (the first on ties), with its provenance."""
    rows = []
    for prompt, cands in zip(prompts, candidates):
        best = max(cands, key=lambda c: c.score)
        rows.append({"prompt": prompt, "response": best.text, "score": best.score, "model": best.model,
                     "seed": best.seed, "scorer": scorer, "candidates": len(cands)})
    return rows
