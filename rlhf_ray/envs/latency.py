"""A stand-in for a slow tool or remote environment: every call takes a random time.

For benchmarks (benchmarks/bench_multiturn.py) and load tests of the environment actors: each step
sleeps a seeded random time in [min_s, max_s], answers "ok", and ends the episode after ``turns`` turns.
"""

from __future__ import annotations

import random
import time

from rlhf_ray.envs.base import Environment, Observation


class LatencyEnvironment(Environment):
    def __init__(self, min_s: float = 0.05, max_s: float = 0.5, turns: int = 3):
        if not 0 <= min_s <= max_s:
            raise ValueError(f"LatencyEnvironment needs 0 <= min_s <= max_s, got min_s={min_s}, max_s={max_s}")
        self.min_s, self.max_s, self.turns = min_s, max_s, turns

    def reset(self, row: dict) -> None:
        self.rng = random.Random(row.get("prompt", ""))  # the same prompt waits the same times in every run
        self.turn = 0

    def step(self, action: str) -> Observation:
        time.sleep(self.rng.uniform(self.min_s, self.max_s))
        self.turn += 1
        return Observation(text="ok", done=self.turn >= self.turns)
