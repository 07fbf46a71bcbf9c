"""Metrics sinks (metrics.jsonl, console, wandb) and the per-stage timer.

Every sink gets the same flat names (``reward/mean``, ``time/generate`` ...), listed in docs/metrics.md.
"""

from __future__ import annotations

import json
import time
from contextlib import contextmanager
from pathlib import Path

from ray.util.metrics import Gauge

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
    """Sends every step's metrics, under the same names, to each sink the config turns on."""

    def __init__(self, cfg: Config, run_dir: Path, run_name: str = "run"):
        self.cfg = cfg
        self.path = run_dir / "metrics.jsonl"
        self.file = self.path.open("a")
        self.wandb = self.tensorboard = self.ray_metrics = None
        lc = cfg.logging
        if lc.wandb_mode != "disabled":
            import wandb

            self.wandb = wandb.init(project=lc.wandb_project, mode=lc.wandb_mode, dir=str(run_dir), name=run_name,
                                    config=cfg.model_dump(mode="json"), reinit="finish_previous")
        if lc.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.tensorboard = SummaryWriter(str(run_dir / "tensorboard"))
        if lc.ray_metrics:
            self.ray_metrics = RayMetrics(run_name)

    def log(self, step: int, metrics: dict[str, float], echo=print) -> None:
        row = {"step": step, **{k: _plain(v) for k, v in metrics.items()}}
        self.file.write(json.dumps(row) + "\n")
        self.file.flush()
        if self.wandb is not None:
            self.wandb.log(metrics, step=step)
        if self.tensorboard is not None:
            for k, v in row.items():
                if k != "step" and isinstance(v, (int, float)):
                    self.tensorboard.add_scalar(k, v, step)
            self.tensorboard.flush()
        if self.ray_metrics is not None:
            self.ray_metrics.log(metrics)
        if echo and step % self.cfg.logging.console_every == 0:
            echo(console_line(step, metrics))

    def close(self) -> None:
        self.file.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tensorboard is not None:
            self.tensorboard.close()


class RayMetrics:
    """The run's headline metrics as Ray gauges, so they sit beside the cluster's own in the Ray
    dashboard's Metrics view and in Prometheus/Grafana (names: rlhf_ray_<metric with _ for />)."""

    EXPORTED = ("reward/mean", "kl/mean", "eval/accuracy", "learner/policy_loss", "critic/value_loss",
                "throughput/samples_per_s", "throughput/gen_tokens_per_s", "time/step", "time/generate",
                "time/score", "time/update", "time/sync", "check/logprob_gap_mean")

    def __init__(self, run_name: str):
        self.tags = {"run": run_name}
        self.gauges = {k: Gauge("rlhf_ray_" + k.replace("/", "_"), description=k, tag_keys=("run",))
                       for k in self.EXPORTED}

    def log(self, metrics: dict[str, float]) -> None:
        for k, gauge in self.gauges.items():
            if k in metrics:
                gauge.set(float(metrics[k]), tags=self.tags)


# One list for every loop: a key a loop does not log is left out of its line.
CONSOLE_KEYS = [("reward/mean", "reward"), ("eval/accuracy", "eval_acc"), ("kl/mean", "kl"),
                ("learner/policy_loss", "pg_loss"), ("critic/value_loss", "v_loss"), ("learner/clipfrac", "clip"),
                ("response/length_mean", "len"), ("check/logprob_gap_mean", "lp_gap"),
                ("learner/loss", "loss"), ("learner/sft_loss", "loss"), ("reward/loss", "loss"),
                ("learner/accuracy", "acc"), ("reward/accuracy", "acc"), ("learner/margin", "margin"),
                ("reward/margin", "margin"), ("eval/nll", "eval_nll"), ("time/step", "s")]


def console_line(step: int, metrics: dict[str, float]) -> str:
    parts = [f"step {step}"]
    parts += [f"{short}={metrics[k]:.4g}" for k, short in CONSOLE_KEYS if k in metrics]
    return " | ".join(parts)


def _plain(v):
    return float(v) if hasattr(v, "__float__") and not isinstance(v, (int, bool)) else v
