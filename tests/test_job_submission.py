"""End to end through the Ray Jobs API: a local head on 127.0.0.1, the launcher submits the tiny PPO
run, the job succeeds, and its metrics and report files are there. Slow: starts its own Ray."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from conftest import tiny_overrides
from rlhf_ray.jobs import build_entrypoint, runtime_env
from rlhf_ray.roles.base import free_port

ROOT = Path(__file__).resolve().parents[1]


def test_entrypoint_and_runtime_env(monkeypatch, tmp_path):
    from rlhf_ray.jobs import FORWARDED_ENV

    for name in FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "secret")
    assert build_entrypoint("c.yaml", ["a.b=1"]) == "python -m rlhf_ray train c.yaml a.b=1 ray.address=auto"
    assert build_entrypoint(None, ["ray.address=ray://h:10001"]).endswith("ray.address=ray://h:10001")
    env = runtime_env(str(tmp_path), env={"X": "1"})
    assert env["env_vars"] == {"WANDB_API_KEY": "secret", "X": "1"} and ".venv/" in env["excludes"]
    with pytest.raises(FileNotFoundError, match="--requirements nope.txt does not exist"):
        runtime_env(".", requirements="nope.txt")


def _cli(*args, timeout=120) -> subprocess.CompletedProcess:
    """`rlhf-ray ...` in its own process, as a user runs it: Ray's client reads RAY_AUTH_MODE when it is
    first imported, and this test process has imported Ray long before (other test modules)."""
    return subprocess.run([str(Path(sys.executable).parent / "rlhf-ray"), *args], capture_output=True, text=True,
                          timeout=timeout, env={k: v for k, v in os.environ.items() if k != "RAY_AUTH_MODE"})


@pytest.fixture
def ray_head(tmp_path):
    gcs, dash = free_port(), free_port()
    # The head's `python` must be this environment's, as a cluster image's python has the project's deps.
    env = {**os.environ, "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0",
           "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"}
    proc = subprocess.Popen(
        [str(Path(sys.executable).parent / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1",
         f"--port={gcs}", "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", "--num-cpus=8",
         "--disable-usage-stats"], env=env, start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"http://127.0.0.1:{dash}"
    deadline = time.monotonic() + 120
    while _cli("jobs", "list", "--address", address).returncode != 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            pytest.fail("the local Ray head did not come up within 120 s")
        time.sleep(2)
    yield address
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)


@pytest.mark.slow
def test_submit_tiny_ppo_job(ray_head, tiny_policy, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_policy, run_dir, "rollout.backend=hf")
    job = _cli("submit", *overrides, "--address", ray_head, "--working-dir", str(ROOT), "--job-id", "tiny-ppo",
               "--follow", timeout=900)
    assert job.returncode == 0 and "job tiny-ppo SUCCEEDED" in job.stdout, (job.stdout + job.stderr)[-3000:]
    assert "tiny-ppo\tSUCCEEDED" in _cli("jobs", "list", "--address", ray_head).stdout
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval/accuracy" in rows[-1]
    assert (run_dir / "report.png").is_file() and "steps: 2" in (run_dir / "report.txt").read_text()
    assert "held-out eval/accuracy: before" in job.stdout
