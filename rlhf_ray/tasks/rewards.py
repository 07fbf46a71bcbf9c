"""Rule-based verifiers usable as reward functions named by import path.

Signature of every reward here: f(prompts, responses, answers) -> list[float], one call per
batch (e.g. `rlhf_ray.tasks.rewards:arithmetic_exact_match`).
"""
from __future__ import annotations

import re
from decimal import Decimal, InvalidOperation

# A leading minus only counts as a sign when it does not follow a digit, so "63-59" reads
# as 63 and 59 rather than 63 and -59. Commas only count in proper thousands groups.
_NUMBER = re.compile(r"(?<!\d)[-\u2212]?(?:\d{1,3}(?:,\d{3})+(?!\d)|\d+)(?:\.\d+)?")
_GSM8K_MARK = "####"


def _canonical(number: str) -> str | None:
    """'1,234' -> '1234', '122.0' -> '122', '-0' -> '0'."""
    try:
        value = Decimal(number.replace(",", "").replace("\u2212", "-"))
    except InvalidOperation:
        return None
    if value == 0:
        return "0"
    return format(value.normalize(), "f")


def _last_number(text: str) -> str | None:
    matches = _NUMBER.findall(text)
    return _canonical(matches[-1]) if matches else None


def extract_final_number(text: str | None) -> str | None:
    """The answer a response commits to, as a canonical decimal string, or None.

    Models often restate the question ("59 + 63 = 122"), so the last number is taken, not
    the first. A GSM8K-style "#### 42" marker takes precedence when present.
    """
    if not text:
        return None
    if _GSM8K_MARK in text:
        tail = text.rsplit(_GSM8K_MARK, 1)[1]
        match = _NUMBER.search(tail)
        if match:
            return _canonical(match.group(0))
    return _last_number(text)


def _same_number(predicted: str | None, reference: str | None) -> bool:
    if predicted is None or reference is None:
        return False
    return Decimal(predicted) == Decimal(reference)


def _check_lengths(prompts, responses, answers) -> None:
    if not (len(prompts) == len(responses) == len(answers)):
        raise ValueError(
            f"batch length mismatch: {len(prompts)} prompts, {len(responses)} responses, "
            f"{len(answers)} answers"
        )


def arithmetic_exact_match(prompts: list[str], responses: list[str], answers: list[str]) -> list[float]:
    """1.0 where the response's final number equals the reference answer, else 0.0."""
    _check_lengths(prompts, responses, answers)
    return [
        1.0 if _same_number(extract_final_number(r), _canonical(str(a).strip())) else 0.0
        for r, a in zip(responses, answers)
    ]


def gsm8k_exact_match(prompts: list[str], responses: list[str], answers: list[str]) -> list[float]:
    """Like arithmetic_exact_match, with the reference being a GSM8K solution ending '#### N'."""
    _check_lengths(prompts, responses, answers)
    out = []
    for response, reference in zip(responses, answers):
        ref = reference.rsplit(_GSM8K_MARK, 1)[1] if _GSM8K_MARK in reference else reference
        out.append(1.0 if _same_number(extract_final_number(response), _last_number(ref)) else 0.0)
    return out


# Rewards that score a response against its row's reference answer: the preflight refuses them on rows without one.
arithmetic_exact_match.needs_answers = True
gsm8k_exact_match.needs_answers = True
