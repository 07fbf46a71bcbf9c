"""Metrics sinks carry the same names and values: metrics.jsonl, TensorBoard, console."""

from __future__ import annotations

import json

import pytest

from rlhf_ray.config.loading import load_config
from rlhf_ray.runs.tracking import StageTimer, Tracker, console_line

pytestmark = pytest.mark.unit


def test_jsonl_and_tensorboard_agree(tmp_path):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cfg = load_config(overrides=["logging.wandb_mode=disabled", "logging.tensorboard=true", "logging.ray_metrics=false"])
    lines = []
    t = Tracker(cfg, tmp_path)
    t.log(1, {"reward/mean": 0.25, "kl/mean": 0.5}, echo=lines.append)
    t.log(2, {"reward/mean": 0.75, "kl/mean": 0.25}, echo=lines.append)
    t.close()
    rows = [json.loads(x) for x in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert rows == [{"step": 1, "reward/mean": 0.25, "kl/mean": 0.5}, {"step": 2, "reward/mean": 0.75, "kl/mean": 0.25}]
    acc = EventAccumulator(str(tmp_path / "tensorboard"))
    acc.Reload()
    assert [(e.step, e.value) for e in acc.Scalars("reward/mean")] == [(1, 0.25), (2, 0.75)]
    assert lines == ["step 1 | reward=0.25 | kl=0.5", "step 2 | reward=0.75 | kl=0.25"]


def test_stage_timer_accumulates():
    timer = StageTimer()
    for _ in range(2):
        with timer("generate"):
            pass
    assert set(timer.seconds) == {"time/generate"} and timer.seconds["time/generate"] >= 0


def test_console_line_order():
    assert console_line(3, {"time/step": 2.0, "reward/mean": 1.0}) == "step 3 | reward=1 | s=2"


def test_console_line_shows_offline_losses_too():
    """Every loop logs through the same Tracker: an offline step's line names its loss, accuracy and margin."""
    line = console_line(5, {"learner/loss": 0.69, "learner/accuracy": 0.5, "learner/margin": 0.01, "time/step": 2.0})
    assert line == "step 5 | loss=0.69 | acc=0.5 | margin=0.01 | s=2"
    assert console_line(5, {"reward/loss": 0.6, "reward/accuracy": 0.75}) == "step 5 | loss=0.6 | acc=0.75"
