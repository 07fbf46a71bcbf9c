"""Held-out evaluation on its own: the loop's greedy evaluation without training (``rlhf-ray eval``);
with trainer.eval.baseline, the answers judged against the baseline's (rlhf_ray.trainers.compare).

Only the rollout engines, the reward actors and (with env.*) the environment actors start; with an
environment every prompt runs the same multi-turn loop as training, greedily. The prompts are the
task's held-out split, or any JSONL prompt file (prompt, optional answer). Writes
``eval_step00000.jsonl`` (every answer, and with an environment the whole transcript) and
``eval_summary.json`` into trainer.run_dir.
"""

from __future__ import annotations

import json

from rlhf_ray.config import Config
from rlhf_ray.trainers.inputs import PromptInputs
from rlhf_ray.trainers.online import OnlineController, inference_roles

PROMPT_FILE_ROWS = 1_000_000  # task.n_eval for a prompt file: all of its rows


def prompt_file_overrides(path: str, split: str = "eval") -> list[str]:
    """Config overrides that make ``path`` (JSONL: prompt, optional answer) the held-out prompts (or, with
    split="train", the training prompts: all of its rows)."""
    return ["task.name=jsonl", f"task.train_file={path}", f"task.eval_file={path}", f"task.n_{split}={PROMPT_FILE_ROWS}"]


def run_eval(cfg: Config) -> dict[str, float]:
    """The held-out metrics of the policy at model.path (eval/accuracy: the mean reward; with env.*, eval/env/...)."""
    ctl = OnlineController(PromptInputs.load(cfg), roles=inference_roles(cfg))
    ctl.standalone_eval = True  # with trainer.eval.baseline: judged against it (rlhf_ray.trainers.compare)
    try:
        metrics = ctl.evaluate(0)
    finally:
        ctl.shutdown()
    metrics["eval/prompts"] = float(len(ctl.eval_set.ids))
    (ctl.run_dir / "eval_summary.json").write_text(json.dumps(metrics, indent=1))
    return metrics
