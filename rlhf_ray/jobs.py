"""Ray Jobs: submit a run to a cluster, follow its logs, stop it, list jobs.

The job's entrypoint is the same `rlhf-ray train CONFIG overrides` a user runs locally, with
`ray.address=auto` so the controller joins the cluster it was submitted to. The config is validated
here first, so a typo fails in the terminal, not minutes later on the cluster.
"""

from __future__ import annotations

import os
import shlex
import time
from pathlib import Path

from rlhf_ray.config import load_config

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
# Never shipped to the cluster: environments, outputs, caches (the working dir is zipped and uploaded).
EXCLUDES = [".venv/", "runs/", "wandb/", ".git/", "**/__pycache__/", "*.egg-info/", ".cache/", ".whl/"]
# Passed from the submitting shell to the job when set there.
FORWARDED_ENV = ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "HF_HUB_OFFLINE", "RLHF_RAY_CACHE")


def client(address: str | None = None):
    # `ray start` heads require a token by default, but the client library only sends one in token
    # mode, which it reads when Ray is first imported: use it whenever a token is at hand (env var,
    # RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token).
    has_token = "RAY_AUTH_TOKEN" in os.environ or Path(
        os.environ.get("RAY_AUTH_TOKEN_PATH", Path.home() / ".ray" / "auth_token")).is_file()
    if has_token:
        os.environ.setdefault("RAY_AUTH_MODE", "token")
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(address or os.environ.get("RAY_ADDRESS", DEFAULT_DASHBOARD))


def build_entrypoint(config_path: str | None, overrides: list[str]) -> str:
    args = ["python", "-m", "rlhf_ray", "train"] + ([config_path] if config_path else []) + list(overrides)
    if not any(o.startswith("ray.address=") for o in overrides):
        args.append("ray.address=auto")
    return " ".join(shlex.quote(a) for a in args)


def runtime_env(working_dir: str, requirements: str | None = None, env: dict[str, str] | None = None) -> dict:
    env_vars = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
    env_vars.update(env or {})
    renv: dict = {"working_dir": working_dir, "excludes": EXCLUDES, "env_vars": env_vars}
    if requirements:
        if not Path(requirements).is_file():
            raise FileNotFoundError(f"--requirements {requirements} does not exist")
        renv["pip"] = [line.strip() for line in Path(requirements).read_text().splitlines()
                       if line.strip() and not line.startswith("#")]
    return renv


def submit(config_path: str | None, overrides: list[str], address: str | None = None, working_dir: str = ".",
           requirements: str | None = None, env: dict[str, str] | None = None, job_id: str | None = None) -> str:
    load_config(config_path, overrides)  # fail here, not on the cluster
    c = client(address)
    return c.submit_job(entrypoint=build_entrypoint(config_path, overrides), submission_id=job_id,
                        runtime_env=runtime_env(working_dir, requirements, env),
                        metadata={"tool": "rlhf_ray", "config": str(config_path)})


def follow(job_id: str, address: str | None = None, poll_s: float = 2.0, echo=print) -> str:
    """Prints new log lines until the job ends; returns its final status."""
    c = client(address)  # first: it sets RAY_AUTH_MODE before Ray is imported
    from ray.job_submission import JobStatus

    seen = 0
    while True:
        status = c.get_job_status(job_id)
        logs = c.get_job_logs(job_id)
        if len(logs) > seen:
            echo(logs[seen:], end="")
            seen = len(logs)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value)
        time.sleep(poll_s)


def wait(job_id: str, address: str | None = None, timeout_s: float = 1800, poll_s: float = 2.0) -> str:
    c = client(address)  # first: it sets RAY_AUTH_MODE before Ray is imported
    from ray.job_submission import JobStatus

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = c.get_job_status(job_id)
        if status in (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.STOPPED):
            return str(status.value)
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} still {status.value} after {timeout_s:.0f}s")


def stop(job_id: str, address: str | None = None) -> bool:
    return client(address).stop_job(job_id)


def list_jobs(address: str | None = None) -> list[dict]:
    return [{"job_id": j.submission_id, "status": str(j.status.value), "entrypoint": j.entrypoint,
             "start_time": j.start_time} for j in client(address).list_jobs()]
