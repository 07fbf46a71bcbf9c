"""End to end through the Ray Jobs API: a local head on 127.0.0.1 with its own token, the launcher submits
the tiny PPO run, the job succeeds, its actors ran in that head's cluster, and its metrics and report files
are there; the CLI works, or says what is wrong, whatever the client's token state. Slow: starts its own Ray.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from conftest import tiny_overrides
from rlhf_ray.cluster.jobs import build_entrypoint, runtime_env
from rlhf_ray.roles.base import free_port

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
# What decides which Ray a process joins and which token it sends: never inherited from the shell running
# the tests (a user's exported RAY_ADDRESS or token must not point the test at another cluster).
RAY_AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH", "RAY_ADDRESS")
ROLES = ("rollout", "learner", "critic", "reference", "reward")


def test_entrypoint_and_runtime_env(monkeypatch, tmp_path):
    from rlhf_ray.cluster.jobs import FORWARDED_ENV

    for name in FORWARDED_ENV:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("WANDB_API_KEY", "secret")
    # no ray.address: a job driver joins its cluster by the empty address's rule (test_cluster_address_rule)
    assert build_entrypoint("c.yaml", ["a.b=1"]) == "python -m rlhf_ray train c.yaml a.b=1"
    assert build_entrypoint(None, ["ray.address=ray://h:10001"]).endswith("train ray.address=ray://h:10001")
    env = runtime_env(str(tmp_path), env={"X": "1"})
    assert env["env_vars"] == {"WANDB_API_KEY": "secret", "X": "1"} and ".venv/" in env["excludes"]
    with pytest.raises(FileNotFoundError, match="--requirements nope.txt does not exist"):
        runtime_env(".", requirements="nope.txt")


def test_cluster_address_rule(monkeypatch):
    from rlhf_ray.config.loading import load_config

    def address(value=None):
        return load_config(None, [f"ray.address={value}"] if value else []).ray.cluster_address()

    for name in ("RAY_ADDRESS", "RAY_JOB_CONFIG_JSON_ENV_VAR"):
        monkeypatch.delenv(name, raising=False)
    assert address() is None and address("local") is None and address("auto") == "auto"
    monkeypatch.setenv("RAY_ADDRESS", "http://127.0.0.1:8265")  # a user's shell, for `rlhf-ray submit`
    assert address() is None
    monkeypatch.setenv("RAY_JOB_CONFIG_JSON_ENV_VAR", "{}")  # what Ray Jobs sets for a job's driver
    assert address() == "auto" and address("local") is None and address("h:6379") == "h:6379"


def test_token_sources(monkeypatch, tmp_path):
    from rlhf_ray.cluster.jobs import cluster_token

    for name in RAY_AUTH_VARS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cluster_token()[0] is None
    (tmp_path / ".ray").mkdir()
    (tmp_path / ".ray" / "auth_token").write_text("home\n")
    assert cluster_token()[0] == "home"
    (tmp_path / "t").write_text("file")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "t"))
    assert cluster_token() == ("file", f"RAY_AUTH_TOKEN_PATH={tmp_path / 't'}")
    monkeypatch.setenv("RAY_AUTH_TOKEN", "env")
    assert cluster_token() == ("env", "RAY_AUTH_TOKEN")
    monkeypatch.delenv("RAY_AUTH_TOKEN")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", str(tmp_path / "missing"))
    with pytest.raises(FileNotFoundError, match="is not a file holding a token"):
        cluster_token()


def clean_env(**changes: str) -> dict[str, str]:
    """This shell's environment without its Ray address and token settings, plus `changes`."""
    return {**{k: v for k, v in os.environ.items() if k not in RAY_AUTH_VARS}, **changes}


@dataclass
class Head:
    """A `ray start --head` on 127.0.0.1 with token auth on and a token of its own (a file in tmp)."""
    dashboard: str
    token_file: Path

    @property
    def token(self) -> str:
        return self.token_file.read_text()

    def cli(self, *args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess:
        """`rlhf-ray ...` in its own process, as a user runs it, given the token the documented way
        (RAY_AUTH_TOKEN_PATH) unless `env` says otherwise."""
        return subprocess.run([str(BIN / "rlhf-ray"), *args], capture_output=True, text=True, timeout=timeout,
                              env=env or clean_env(RAY_AUTH_TOKEN_PATH=str(self.token_file)))

    def api(self, path: str):
        """The head's REST API (dashboard, state API), with its token."""
        request = urllib.request.Request(self.dashboard + path, headers={"Authorization": f"Bearer {self.token}"})
        with urllib.request.urlopen(request, timeout=30) as r:
            return json.loads(r.read())

    def run_actors(self, namespace: str = "rlhf_ray") -> dict[str, dict]:
        """The run's named actors the head's cluster knows, by role-rank ('learner-0'), from its state API."""
        rows = self.api("/api/v0/actors?detail=1&limit=10000")["data"]["result"]["result"]
        return {a["name"].rsplit("/", 1)[-1]: a for a in rows if a.get("ray_namespace") == namespace and a.get("name")}

    def head_node_id(self) -> str:
        rows = self.api("/api/v0/nodes?limit=100")["data"]["result"]["result"]
        return next(n["node_id"] for n in rows if n.get("is_head_node"))


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """Isolated from this machine's other Rays and tokens: its own token file (RAY_AUTH_TOKEN_PATH, which
    Ray reads before ~/.ray/auth_token, so a token a local run left in the home directory plays no part),
    its own temp dir (short: Ray's socket paths must fit 107 bytes), so no `address=auto` elsewhere finds
    it, and its own ports: the job agent's default (52365) is taken whenever another Ray with a dashboard
    runs on the machine, and a head without it answers every submission "No available agent".
    The head's `python` must be this environment's, as a cluster image's python has the deps."""
    token_file = tmp_path_factory.mktemp("head") / "token"
    token_file.write_text(secrets.token_hex(32))
    temp_dir = tempfile.mkdtemp(prefix="rayh-", dir="/tmp")
    gcs, dash, agent, client = (free_port() for _ in range(4))
    env = clean_env(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token_file), RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",
                    PATH=f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address=127.0.0.1", f"--port={gcs}",
         "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--dashboard-agent-listen-port={agent}",
         f"--ray-client-server-port={client}", "--num-cpus=8", "--disable-usage-stats", f"--temp-dir={temp_dir}"],
        env=env, start_new_session=True, stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL)
    head = Head(f"http://127.0.0.1:{dash}", token_file)
    deadline = time.monotonic() + 120
    while head.cli("jobs", "list", "--address", head.dashboard).returncode != 0:
        if time.monotonic() > deadline or proc.poll() is not None:
            os.killpg(proc.pid, signal.SIGTERM)
            pytest.fail("the local Ray head did not come up within 120 s")
        time.sleep(2)
    yield head
    os.killpg(proc.pid, signal.SIGTERM)
    proc.wait(timeout=60)
    shutil.rmtree(temp_dir, ignore_errors=True)


@pytest.mark.slow
def test_cli_whatever_the_token_state(ray_head, tmp_path):
    """No token, a stale one in ~/.ray/auth_token (another cluster's, as a local run leaves), the right one:
    the CLI works or says what to do. HOME is a tmp dir, so the user's own ~/.ray is never read or written."""
    home = tmp_path / "home"
    (home / ".ray").mkdir(parents=True)
    listing = ("jobs", "list", "--address", ray_head.dashboard)
    none = ray_head.cli(*listing, env=clean_env(HOME=str(home)))
    assert none.returncode == 2 and f"the cluster at {ray_head.dashboard} wants its token" in none.stderr, none.stderr
    assert "RAY_AUTH_TOKEN" in none.stderr and "Traceback" not in none.stderr
    (home / ".ray" / "auth_token").write_text(secrets.token_hex(32))
    stale = ray_head.cli(*listing, env=clean_env(HOME=str(home)))
    assert stale.returncode == 2 and f"rejected the token from {home}/.ray/auth_token" in stale.stderr, stale.stderr
    for given in ({"RAY_AUTH_TOKEN": ray_head.token}, {"RAY_AUTH_TOKEN_PATH": str(ray_head.token_file)}):
        ok = ray_head.cli(*listing, env=clean_env(HOME=str(home), **given))
        assert ok.returncode == 0, ok.stderr[-2000:]


@pytest.mark.slow
def test_submit_tiny_ppo_job(ray_head, tiny_policy, tmp_path):
    run_dir = tmp_path / "run"
    overrides = tiny_overrides(tiny_policy, run_dir, "rollout.backend=hf")
    job = ray_head.cli("submit", *overrides, "--address", ray_head.dashboard, "--working-dir", str(ROOT),
                       "--job-id", "tiny-ppo", "--follow", timeout=900)
    assert job.returncode == 0 and "job tiny-ppo SUCCEEDED" in job.stdout, (job.stdout + job.stderr)[-3000:]
    assert "tiny-ppo\tSUCCEEDED" in ray_head.cli("jobs", "list", "--address", ray_head.dashboard).stdout
    # The driver, told nothing about ray.address, joined the head's cluster (not a private Ray of its
    # own): the head knows the run's named actors, started by this job, on its node.
    details = ray_head.api("/api/jobs/tiny-ppo")
    assert "ray.address" not in details["entrypoint"]
    driver_job = details["job_id"]
    actors, head_node = ray_head.run_actors(), ray_head.head_node_id()
    for name in (f"{role}-0" for role in ROLES):
        assert name in actors, f"{name} not in the head's actors: {sorted(actors)}"
        assert actors[name]["node_id"] == head_node and actors[name]["job_id"] == driver_job, actors[name]
    rows = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows] == [0, 1, 2] and "eval/accuracy" in rows[-1]
    assert (run_dir / "report.png").is_file() and "steps: 2" in (run_dir / "report.txt").read_text()
    assert "held-out eval/accuracy: before" in job.stdout
