"""The run report: plots and summary from metrics.jsonl."""

from __future__ import annotations

import json

import pytest

from rlhf_ray.runs.report import read_metrics, summarize, write_report

pytestmark = pytest.mark.unit


def _write(run_dir, rows):
    (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))


def test_report_files_and_summary(tmp_path):
    rows = [{"step": 0, "eval/accuracy": 0.4}]
    rows += [{"step": s, "reward/mean": 0.1 * s, "kl/mean": 0.01, "time/step": 10.0, "time/generate": 6.0,
              "time/update": 4.0} for s in range(1, 4)]
    rows[-1]["eval/accuracy"] = 0.55
    _write(tmp_path, rows)
    summary = write_report(tmp_path)
    assert (tmp_path / "report.png").stat().st_size > 10_000
    assert summary["eval/accuracy"] == {"first": 0.4, "last": 0.55, "first_step": 0, "last_step": 3}
    assert summary["stage_share"] == {"time/generate": pytest.approx(0.6), "time/update": pytest.approx(0.4)}
    text = (tmp_path / "report.txt").read_text()
    assert "eval/accuracy: 0.4000 (step 0) -> 0.5500 (step 3)" in text
    assert "generate 60%" in text


def test_bad_metrics_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="metrics.jsonl does not exist"):
        read_metrics(tmp_path)
    (tmp_path / "metrics.jsonl").write_text('{"step": 1}\n{oops\n')
    with pytest.raises(ValueError, match="line 2 is not valid JSON"):
        read_metrics(tmp_path)


def test_summary_skips_non_finite_values():
    assert summarize([{"step": 1, "reward/mean": float("nan")}, {"step": 2, "reward/mean": 1.0}])["reward/mean"]["first"] == 1.0
