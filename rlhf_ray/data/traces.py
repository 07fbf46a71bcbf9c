"""SFT warm-up traces for the calculator environment, written in code.

A small model rarely emits a well-formed tool call by chance, so RL with tools starts from SFT on
traces of the intended behaviour. Each arithmetic question gives two rows in the ``messages`` SFT
format (the last message is the assistant reply trained on): the tool call, and the final answer
after the tool's response. The tool's response in the trace is the calculator's real output.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

from rlhf_ray.config import Config
from rlhf_ray.data.prompts import run_system_prompt, task_rows
from rlhf_ray.envs.base import OBSERVATION_ROLE
from rlhf_ray.envs.calculator import calculator
from rlhf_ray.envs.tools import format_tool_call

FINAL_ANSWER = "The answer is {answer}."
_QUESTION = re.compile(r"^\s*What is (.+?)\?\s*$", re.DOTALL)


def calculator_sft_rows(rows: list[dict], system_prompt: str | None,
                        final_answer: str = FINAL_ANSWER) -> list[dict]:
    """Two {"messages": [...]} rows per {"prompt": "What is A op B?", "answer": ...} row: the call,
    then the answer. A question the calculator answers differently from the row is an error, so
    the traces never teach the model to contradict its tool."""
    out = []
    for i, row in enumerate(rows):
        match = _QUESTION.match(str(row.get("prompt", "")))
        if match is None:
            raise ValueError(f"row {i}: prompt must look like 'What is A op B?', got {row.get('prompt')!r:.80}")
        expression = match.group(1).strip()
        result = calculator(expression)
        if result != str(row.get("answer")).strip():
            raise ValueError(f"row {i}: the calculator says {expression} = {result}, the row's answer is "
                             f"{row.get('answer')!r}")
        prompt = ([{"role": "system", "content": system_prompt}] if system_prompt else []) + [
            {"role": "user", "content": row["prompt"]}]
        call = {"role": "assistant", "content": format_tool_call("calculator", {"expression": expression})}
        out.append({"messages": [*prompt, call]})
        out.append({"messages": [*prompt, call, {"role": OBSERVATION_ROLE, "content": result},
                                 {"role": "assistant", "content": final_answer.format(answer=row["answer"])}]})
    return out


def write_calculator_traces(cfg: Config, path: str, n: int) -> int:
    """Traces of the first ``n`` training questions of ``cfg.task`` (never its held-out ones), under the
    run's own system prompt, written as JSONL for an SFT warm-up (``rlhf-ray make-traces``). Returns rows written."""
    if cfg.task.name != "arithmetic":
        raise ValueError(f"calculator traces are written for task.name=arithmetic, not {cfg.task.name}")
    (train, _), _ = task_rows(cfg)
    if n > len(train):
        raise ValueError(f"--n {n} is more than the task's task.n_train={len(train)} training questions")
    rows = calculator_sft_rows(train[:n], run_system_prompt(cfg))
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp")
    tmp.write_text("".join(json.dumps(r) + "\n" for r in rows))
    tmp.replace(out)  # never a half-written file under the name a later SFT run reads
    return len(rows)
