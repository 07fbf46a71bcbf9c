"""Metrics sinks (metrics.jsonl, console, wandb) and the per-stage timer.

Every sink gets the same flat names (``reward/mean``, ``time/generate`` ...), listed in docs/metrics.md.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from rlhf_ray.config import Config


class StageTimer:
    """``with timer("generate"): ...`` records seconds per stage as ``time/<stage>``."""

    def __init__(self):
        self.seconds: dict[str, float] = {}

    @contextmanager
    def __call__(self, stage: str):
        start = time.perf_counter()
        try:
            yield
        finally:
            self.seconds[f"time/{stage}"] = self.seconds.get(f"time/{stage}", 0.0) + time.perf_counter() - start


class Tracker:
    def __init__(self, cfg: Config, run_dir: Path):
        self.cfg = cfg
        self.path = run_dir / "metrics.jsonl"
        self.file = self.path.open("a")
        self.wandb = None
        if cfg.logging.wandb_mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=cfg.logging.wandb_project, mode=cfg.logging.wandb_mode,
                                    dir=str(run_dir), config=cfg.model_dump(mode="json"), reinit="finish_previous")

    def log(self, step: int, metrics: dict[str, float], echo=print) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if echo and step % self.cfg.logging.console_every == 0:
            echo(console_line(step, metrics))

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()


CONSOLE_KEYS = [("reward/mean", "reward"), ("eval/accuracy", "eval_acc"), ("kl/mean", "kl"),
                ("learner/policy_loss", "pg_loss"), ("critic/value_loss", "v_loss"), ("learner/clipfrac", "clip"),
                ("response/length_mean", "len"), ("check/logprob_gap_mean", "lp_gap"), ("time/step", "s")]


def console_line(step: int, metrics: dict[str, float]) -> str:
    parts = [f"step {step}"]
    parts += [f"{short}={metrics[k]:.4g}" for k, short in CONSOLE_KEYS if k in metrics]
    return " | ".join(parts)


def _plain(v):
    return float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v
