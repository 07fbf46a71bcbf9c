"""Synthetic pairs from scored candidates (rlhf_ray.data.synthetic), against plain loops."""

from __future__ import annotations

import random

import pytest
import torch

from rlhf_ray.data.synthetic import Candidate, choose_pairs, distill_rows, pair_rows

pytestmark = pytest.mark.unit


def _loop_best_worst(scores: list[list[float]], margin: float) -> list[tuple[int, int, int]]:
    out = []
    for p, row in enumerate(scores):
        hi, lo = max(row), min(row)
        best = row.index(hi)
        worst = len(row) - 1 - row[::-1].index(lo)
        if hi - lo > 0 and hi - lo >= margin:
            out.append((p, best, worst))
    return out


@pytest.mark.parametrize("margin", [0.0, 0.5, 1.5])
def test_best_worst_pairs_respect_the_margin(margin):
    rng = random.Random(0)
    scores = [[round(rng.uniform(-2, 2), 1) for _ in range(5)] for _ in range(200)]
    scores[0] = [1.0] * 5  # all tied: no pair, whatever the margin
    pairs = choose_pairs(torch.tensor(scores, dtype=torch.float64), "best_worst", margin, seed=0)
    assert pairs == _loop_best_worst(scores, margin)
    assert all(scores[p][c] - scores[p][r] >= margin and scores[p][c] > scores[p][r] for p, c, r in pairs)
    assert 0 not in [p for p, _, _ in pairs]


def test_best_random_is_seeded_and_never_the_best():
    scores = torch.tensor([[0.0, 3.0, 1.0, 2.0]] * 300)
    a = choose_pairs(scores, "best_random", 0.0, seed=1)
    assert a == choose_pairs(scores, "best_random", 0.0, seed=1)
    assert a != choose_pairs(scores, "best_random", 0.0, seed=2)
    assert all(c == 1 and r != 1 for _, c, r in a)
    counts = [sum(r == j for _, _, r in a) for j in (0, 2, 3)]
    assert min(counts) > 70  # each other candidate about a third of the time
    assert choose_pairs(scores, "best_random", 2.5, seed=1) == [(p, 1, r) for p, _, r in a if r == 0]


def test_rows_carry_provenance():
    cands = [[Candidate("good", 2.0, "m1", 11), Candidate("bad", -1.0, "m2", 12)],
             [Candidate("x", 0.5, "m1", 13), Candidate("y", 0.5, "m2", 14)]]
    rows = pair_rows(["q1", "q2"], cands, choose_pairs(torch.tensor([[2.0, -1.0], [0.5, 0.5]]), "best_worst", 0.1, 0),
                     "rule:f")
    assert rows == [{"prompt": "q1", "chosen": "good", "rejected": "bad", "chosen_score": 2.0, "rejected_score": -1.0,
                     "margin": 3.0, "chosen_model": "m1", "rejected_model": "m2", "chosen_seed": 11,
                     "rejected_seed": 12, "scorer": "rule:f", "candidates": 2}]
    sft = distill_rows(["q1", "q2"], cands, "rule:f")
    assert [(r["response"], r["model"], r["seed"]) for r in sft] == [("good", "m1", 11), ("x", "m1", 13)]


def test_too_few_candidates_is_an_error():
    with pytest.raises(ValueError, match="at least 2 candidates"):
        choose_pairs(torch.tensor([[1.0], [2.0]]), "best_worst", 0.0, 0)


def test_candidates_are_kept_a_chunk_at_a_time_and_a_cut_chunk_is_sampled_again(tmp_path):
    from rlhf_ray.data.candidates import CandidateFile

    prompts = ["p0", "p1", "p2", "p3"]
    path = tmp_path / "out.jsonl.candidates" / "model0.jsonl"
    store = CandidateFile(path, "m", 2, 7, prompts)
    assert store.done() == []  # nothing yet: the file now holds its header alone
    chunk = [[Candidate(f"a{p}{c}", float(c), "m", 7 + 2 * p + c) for c in range(2)] for p in range(2)]
    store.append(0, chunk)
    with path.open("a") as f:  # the next chunk, cut by a crash mid-write
        f.write('{"row": 2, "text": "a20", "score": 0.0, "seed": 11}\n{"row": 2, "te')
    again = CandidateFile(path, "m", 2, 7, prompts)
    assert again.done() == chunk  # the whole chunk kept, the cut one dropped
    assert len(path.read_text().splitlines()) == 1 + 4  # and dropped from the file, so appends follow on
    assert CandidateFile(path, "m", 2, 8, prompts).done() == []  # another seed: started afresh
    assert CandidateFile(path, "m", 2, 7, prompts).done() == []  # (and the file was started afresh for it)
