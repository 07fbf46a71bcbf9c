"""Run report: PNG plots and a short text summary from a run directory's metrics.jsonl.

Written at the end of every run and on demand with ``rlhf-ray report RUN_DIR``.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

PANELS = [  # (title, metric keys): a panel is drawn when any of its keys was logged
    ("reward", ["reward/mean"]),
    ("held-out", ["eval/accuracy", "eval/preference_accuracy", "eval/pairwise_accuracy", "eval/nll"]),
    ("KL to reference", ["kl/mean"]),
    ("losses", ["learner/policy_loss", "critic/value_loss", "learner/loss", "learner/sft_loss"]),
    ("response length", ["response/length_mean"]),
    ("seconds per stage", ["time/generate", "time/score", "time/update", "time/sync", "time/eval"]),
]


def read_metrics(run_dir: str | Path) -> list[dict]:
    path = Path(run_dir) / "metrics.jsonl"
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist: is {run_dir} a run directory?")
    rows = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if line.strip():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError as e:
                raise ValueError(f"{path} line {i} is not valid JSON ({e})") from None
    return rows


def series(rows: list[dict], key: str) -> tuple[list[float], list[float]]:
    """(steps, values) of one metric, skipping steps that did not log it."""
    pts = [(r["step"], r[key]) for r in rows if isinstance(r.get(key), (int, float)) and math.isfinite(r[key])]
    return [p[0] for p in pts], [p[1] for p in pts]


def write_report(run_dir: str | Path) -> dict:
    """Writes report.png and report.txt into the run directory; returns the summary dict."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    run_dir = Path(run_dir)
    rows = read_metrics(run_dir)
    panels = [(t, [k for k in keys if series(rows, k)[0]]) for t, keys in PANELS]
    panels = [(t, keys) for t, keys in panels if keys]
    cols = 3
    fig, axes = plt.subplots(math.ceil(len(panels) / cols), cols, figsize=(5 * cols, 3.2 * math.ceil(len(panels) / cols)),
                             squeeze=False)
    for ax, (title, keys) in zip(axes.flat, panels):
        for key in keys:
            steps, values = series(rows, key)
            ax.plot(steps, values, marker="o" if len(steps) < 30 else None, ms=3, label=key)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    for ax in list(axes.flat)[len(panels):]:
        ax.axis("off")
    fig.tight_layout()
    fig.savefig(run_dir / "report.png", dpi=90)
    plt.close(fig)
    summary = summarize(rows)
    (run_dir / "report.txt").write_text(format_summary(summary))
    return summary


def summarize(rows: list[dict]) -> dict:
    out: dict = {"steps": max((r["step"] for r in rows), default=0)}
    for key in ("eval/accuracy", "eval/preference_accuracy", "eval/pairwise_accuracy", "eval/nll", "reward/mean", "kl/mean"):
        steps, values = series(rows, key)
        if values:
            out[key] = {"first": values[0], "last": values[-1], "first_step": steps[0], "last_step": steps[-1]}
    times = [r["time/step"] for r in rows if "time/step" in r]
    if times:
        out["seconds_per_step"] = sum(times) / len(times)
        stages = {}
        for key in {k for r in rows for k in r if k.startswith("time/") and k not in ("time/step", "time/eval")}:
            stages[key] = sum(r.get(key, 0.0) for r in rows) / sum(times)
        out["stage_share"] = dict(sorted(stages.items(), key=lambda kv: -kv[1]))
    return out


def format_summary(s: dict) -> str:
    lines = [f"steps: {s['steps']}"]
    for key, v in s.items():
        if isinstance(v, dict) and "first" in v:
            lines.append(f"{key}: {v['first']:.4f} (step {v['first_step']}) -> {v['last']:.4f} (step {v['last_step']})")
    if "seconds_per_step" in s:
        lines.append(f"seconds per step: {s['seconds_per_step']:.1f}")
        lines.append("share of step time: " + ", ".join(f"{k[5:]} {v:.0%}" for k, v in s["stage_share"].items()))
    return "\n".join(lines) + "\n"
