"""Scored candidates kept on disk as they are made, so a long generation that fails keeps what was
done and a rerun continues where it stopped (``rlhf-ray synthesize``).

One JSONL file per model: a header line saying what the candidates are of (the model, samples per
prompt, seed, the prompts' hash, the scorer), then one line per candidate {"row", "text", "score", "seed"},
appended a chunk of prompts at a time in one write, flushed to disk. On a rerun the file is read
back: a header that differs (another model, seed, prompt set or scorer) starts it afresh; a chunk cut by a
crash is dropped, so only prompts with all their candidates count as done, and they are a prefix.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

from rlhf_ray.data.synthetic import Candidate


def prompts_hash(prompts: list) -> str:
    return hashlib.sha256(json.dumps(prompts, sort_keys=True).encode()).hexdigest()[:16]


class CandidateFile:
    def __init__(self, path: Path, model: str, k: int, seed: int, prompts: list, scorer: str = ""):
        self.path, self.model, self.k = Path(path), model, k
        self.header = {"model": model, "samples_per_prompt": k, "seed": seed, "prompts": prompts_hash(prompts),
                       "scorer": scorer}

    def done(self) -> list[list[Candidate]]:
        """Candidates of the prompts already done (each with all k), in prompt order, from the start;
        the file is rewritten to hold exactly them (a cut chunk dropped), or started with its header."""
        rows: dict[int, list[Candidate]] = {}
        lines = self.path.read_text().splitlines() if self.path.is_file() else []
        if lines and _json(lines[0]) == self.header:
            for line in lines[1:]:
                r = _json(line)
                if not isinstance(r, dict):
                    break  # the end of a chunk cut short: sampled again
                rows.setdefault(r["row"], []).append(Candidate(r["text"], r["score"], self.model, r["seed"]))
        prefix: list[list[Candidate]] = []
        while len(rows.get(len(prefix), [])) == self.k:
            prefix.append(rows[len(prefix)])
        self._write([json.dumps(self.header)] + [_line(i, c) for i, cands in enumerate(prefix) for c in cands])
        return prefix

    def append(self, first_row: int, candidates: list[list[Candidate]]) -> None:
        """One chunk: the candidates of prompts first_row, first_row + 1, ... in one write, on disk when it returns."""
        append_lines(self.path, [_line(first_row + i, c) for i, cands in enumerate(candidates) for c in cands])

    def _write(self, lines: list[str]) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(self.path.name + ".tmp")
        tmp.write_text("".join(line + "\n" for line in lines))
        os.replace(tmp, self.path)


def append_lines(path: Path, lines: list[str]) -> None:
    """``lines`` appended to ``path`` in one write, on disk when it returns (a crash leaves at most the
    last line cut, which readers drop)."""
    with Path(path).open("a") as f:
        f.write("".join(line + "\n" for line in lines))
        f.flush()
        os.fsync(f.fileno())


def _line(row: int, c: Candidate) -> str:
    return json.dumps({"row": row, "text": c.text, "score": c.score, "seed": c.seed})


def _json(line: str):
    try:
        return json.loads(line)
    except ValueError:
        return None
