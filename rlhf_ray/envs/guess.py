"""Guess the number: a multi-turn game rewarded only when it ends.

Every turn gets "Higher." or "Lower." and no reward; the single reward (1 for a correct guess, 0
when the guesses run out) comes at the end, so credit has to be assigned across turns. A model
that bisects wins within 7 guesses for numbers up to 100.
"""

from __future__ import annotations

import random
import re

from rlhf_ray.envs.base import Environment, Observation

_INTEGER = re.compile(r"-?\d+")
INVALID = "Please answer with a number."


def guess_prompt(high: int) -> str:
    return (f"I am thinking of a number between 1 and {high}. Guess it: answer with a single number; "
            "I will say Higher or Lower.")


def guess_rows(n: int, seed: int, high: int = 100) -> list[dict]:
    """``n`` prompt rows {"prompt", "answer": str(secret)} with secrets in [1, high], the same for the same seed."""
    if n < 0 or high < 1:
        raise ValueError(f"guess_rows needs n >= 0 and high >= 1, got n={n}, high={high}")
    rng = random.Random(f"guess-{seed}")
    return [{"prompt": guess_prompt(high), "answer": str(rng.randint(1, high))} for _ in range(n)]


def _to_int(digits: str) -> int:
    """The integer, with absurdly long ones clamped (int() refuses strings of over 4300 digits)."""
    sign = -1 if digits.startswith("-") else 1
    magnitude = digits.lstrip("-").lstrip("0")
    return sign * 10**18 if len(magnitude) > 18 else int(digits)


class GuessNumberEnvironment(Environment):
    """The secret is the row's answer; the last integer of each turn is the guess."""

    stop = ()

    def __init__(self, high: int = 100, max_guesses: int = 7):
        if high < 1 or max_guesses < 1:
            raise ValueError(f"GuessNumberEnvironment needs high >= 1 and max_guesses >= 1, "
                             f"got high={high}, max_guesses={max_guesses}")
        self.high = high
        self.max_guesses = max_guesses

    def reset(self, row: dict) -> None:
        super().reset(row)
        try:
            self.secret = int(row["answer"])
        except (KeyError, TypeError, ValueError):
            raise ValueError(f"GuessNumberEnvironment: the row's 'answer' must be an integer, "
                             f"got {row.get('answer') if isinstance(row, dict) else row!r}") from None
        if not 1 <= self.secret <= self.high:
            raise ValueError(f"GuessNumberEnvironment: the row's answer {self.secret} is not in [1, {self.high}]")
        self.wrong = 0
        return None

    def step(self, action: str) -> Observation:
        numbers = _INTEGER.findall(action)
        if not numbers:
            return Observation(text=INVALID, info={"invalid": 1})
        guess = _to_int(numbers[-1])
        if guess == self.secret:
            return Observation(text="Correct!", reward=1.0, done=True, info={"guesses": 1})
        self.wrong += 1
        hint = "Higher." if guess < self.secret else "Lower."
        if self.wrong >= self.max_guesses:
            return Observation(text=f"{hint} No guesses left: the number was {self.secret}.", reward=0.0,
                               done=True, info={"guesses": 1})
        return Observation(text=hint, info={"guesses": 1})
