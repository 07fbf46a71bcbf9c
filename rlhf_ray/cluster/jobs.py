"""Ray Jobs: submit a run to a cluster, follow its logs, stop it, list jobs.

The job's entrypoint is the same `rlhf-ray train CONFIG overrides` a user runs locally: Ray Jobs starts
it as a job driver, which joins the cluster it was submitted to (the rule of `ray.address`, see
rlhf_ray/config/). The config is validated here first, so a typo fails in the terminal, not minutes
later on the cluster.

Token: a Ray 2.60 head with token authentication answers 401 to a client without its token and 403 to
one with another cluster's. The client takes the token from RAY_AUTH_TOKEN, else the file named by
RAY_AUTH_TOKEN_PATH, else ~/.ray/auth_token (Ray's own order, the one `ray job submit` uses), and
sends it itself as an Authorization header: no dependence on RAY_AUTH_MODE being set before Ray's
first import, and a clear error naming where the rejected token came from (docs/security.md).
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

from rlhf_ray.config.loading import load_config

DEFAULT_DASHBOARD = "http://127.0.0.1:8265"
# Never shipped to the cluster: environments, outputs, caches (the working dir is zipped and uploaded; the
# patterns are .gitignore-style: "/runs/" is the default run directory, not the rlhf_ray/runs package).
EXCLUDES = [".venv/", "/runs/", "wandb/", ".git/", "ray_token", "**/__pycache__/", "*.egg-info/", ".cache/", ".whl/"]
# Passed from the submitting shell to the job when set there.
FORWARDED_ENV = ("WANDB_API_KEY", "WANDB_PROJECT", "WANDB_ENTITY", "HF_HUB_OFFLINE", "RLHF_RAY_CACHE")
# How long `submit` keeps trying while a freshly started head has no job agent yet.
AGENT_WAIT_S = 60
HOW_TO_GIVE_TOKEN = ("set RAY_AUTH_TOKEN to the cluster's token, or RAY_AUTH_TOKEN_PATH to a file holding it "
                     "(on the head: `ray get-auth-token`); see docs/security.md")


class ClusterAccessError(RuntimeError):
    """The job commands cannot use the cluster: nothing answers at the address, or it refused the token."""


def dashboard_address(address: str | None = None) -> str:
    return (address or os.environ.get("RAY_ADDRESS") or DEFAULT_DASHBOARD).rstrip("/")


def cluster_token() -> tuple[str | None, str]:
    """(token, where it came from), in Ray's order; (None, why) when there is none."""
    if os.environ.get("RAY_AUTH_TOKEN"):
        return os.environ["RAY_AUTH_TOKEN"].strip(), "RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        path = Path(os.environ["RAY_AUTH_TOKEN_PATH"]).expanduser()
        token = path.read_text().strip() if path.is_file() else ""
        if not token:
            # Ray fails the same way; falling back to another token would hide the mistake.
            raise FileNotFoundError(f"RAY_AUTH_TOKEN_PATH={path} is not a file holding a token")
        return token, f"RAY_AUTH_TOKEN_PATH={path}"
    default = Path.home() / ".ray" / "auth_token"
    token = default.read_text().strip() if default.is_file() else ""
    if token:
        return token, f"{default} (this machine's own token)"
    return None, "no RAY_AUTH_TOKEN, RAY_AUTH_TOKEN_PATH or ~/.ray/auth_token"


def check_address(address: str) -> None:
    """The dashboard's http(s)://host[:port], or a GCS host:port (Ray's client finds the dashboard then)."""
    parts = urlsplit(address if "://" in address else f"gcs://{address}")
    try:
        port = parts.port
    except ValueError:
        port = None
    if (parts.scheme not in ("http", "https", "gcs") or not parts.hostname or parts.path.strip("/")
            or (parts.scheme == "gcs" and port is None)):
        raise ClusterAccessError(f"address {address!r} is not the Ray dashboard's http://HOST:PORT (e.g. "
                                 f"{DEFAULT_DASHBOARD}, which the Jobs API answers at) nor a GCS HOST:PORT: fix "
                                 f"--address or RAY_ADDRESS")


def check_access(address: str, token: str | None, source: str) -> None:
    """One request before Ray's client makes its own, so a token or address problem reads as one, not as
    a traceback."""
    check_address(address)
    if not address.startswith(("http://", "https://")):
        return  # a GCS address: Ray's client finds the dashboard itself
    request = urllib.request.Request(f"{address}/api/version", headers=auth_headers(token))
    try:
        urllib.request.urlopen(request, timeout=30).close()
    except urllib.error.HTTPError as e:
        if e.code == 401:
            raise ClusterAccessError(f"the cluster at {address} wants its token ({source}): "
                                     f"{HOW_TO_GIVE_TOKEN}") from None
        if e.code == 403:
            raise ClusterAccessError(f"the cluster at {address} rejected the token from {source}: it is another "
                                     f"cluster's (a local `rlhf-ray train` writes its own ~/.ray/auth_token); "
                                     f"{HOW_TO_GIVE_TOKEN}") from None
        what = "is not a Ray dashboard (no /api/version)" if e.code == 404 else f"answered HTTP {e.code} ({e.reason})"
        raise ClusterAccessError(f"{address} {what}: give the dashboard's address (port 8265 by default, not the "
                                 f"GCS's 6379) in --address or RAY_ADDRESS") from None
    except OSError as e:  # refused, timed out, no such host
        raise ClusterAccessError(f"no Ray dashboard answers at {address} ({getattr(e, 'reason', e)}): is the head up "
                                 f"(launch/start_local_head.sh), the tunnel open, --address or RAY_ADDRESS right?"
                                 ) from None


def auth_headers(token: str | None) -> dict[str, str]:
    # A cluster without token auth ignores the header: no need to know the cluster's mode first.
    return {"Authorization": f"Bearer {token}"} if token else {}


def auth_mode(address: str | None = None) -> str:
    """'token' or 'disabled' (the dashboard's public /api/authentication_mode); '' when unknown."""
    try:
        with urllib.request.urlopen(f"{dashboard_address(address)}/api/authentication_mode", timeout=10) as r:
            return str(json.loads(r.read()).get("authentication_mode", ""))
    except (OSError, ValueError, AttributeError):
        return ""


def client(address: str | None = None):
    address = dashboard_address(address)
    token, source = cluster_token()
    check_access(address, token, source)
    # Imported here: Ray takes seconds to load, and only job commands need its client.
    from ray.job_submission import JobSubmissionClient

    with jobs_api(address):
        return JobSubmissionClient(address, headers=auth_headers(token))


@contextlib.contextmanager
def jobs_api(address: str | None):
    """Ray's client failing (no dashboard at a GCS address, a job that does not exist, an HTTP error) as one
    ClusterAccessError naming the address, not a traceback."""
    try:
        yield
    except (ClusterAccessError, FileNotFoundError, TimeoutError, KeyboardInterrupt):
        raise
    except Exception as e:  # noqa: BLE001 - Ray's client raises RuntimeError, RpcError, ConnectionError, ...
        first = (str(e).strip().splitlines() or [""])[0]
        raise ClusterAccessError(f"the Jobs API at {dashboard_address(address)} failed: {type(e).__name__}: "
                                 f"{first}") from None


def build_entrypoint(config_path: str | None, overrides: list[str]) -> str:
    # No ray.address override: the driver joins its cluster by the empty address's rule (config.py).
    args = ["python", "-m", "rlhf_ray", "train"] + ([config_path] if config_path else []) + list(overrides)
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
    renv = runtime_env(working_dir, requirements, env)  # a missing requirements file too, before any request
    c = client(address)
    deadline = time.monotonic() + AGENT_WAIT_S
    while True:
        try:
            with jobs_api(address):
                return _submit_once(c, config_path, overrides, renv, job_id)
        except ClusterAccessError as e:
            # A head's first seconds: its job agent has not registered yet, and Ray answers 500 "No available
            # agent to submit job, please try again later" (dashboard/modules/job/job_head.py, submit_job)
            # before creating anything, so trying again is safe.
            if "No available agent" not in str(e):
                raise
            if time.monotonic() > deadline:
                raise ClusterAccessError(f"{e} The head's job agent did not come up in {AGENT_WAIT_S} s: see "
                                         f"dashboard_agent.log in the head's session logs (its port, 52365 by "
                                         f"default, taken by another Ray on that machine? `ray start "
                                         f"--dashboard-agent-listen-port`)") from None
            time.sleep(5)


def _submit_once(c, config_path, overrides, renv: dict, job_id) -> str:
    return c.submit_job(entrypoint=build_entrypoint(config_path, overrides), submission_id=job_id, runtime_env=renv,
                        metadata={"tool": "rlhf_ray", "config": str(config_path)})


def follow(job_id: str, address: str | None = None, poll_s: float = 2.0, echo=print) -> str:
    """Prints new log lines until the job ends; returns its final status."""
    c = client(address)
    seen = 0
    while True:
        status = c.get_job_status(job_id)
        logs = c.get_job_logs(job_id)
        if len(logs) > seen:
            echo(logs[seen:], end="")
            seen = len(logs)
        if status.is_terminal():
            return str(status.value)
        time.sleep(poll_s)


def wait(job_id: str, address: str | None = None, timeout_s: float = 1800, poll_s: float = 2.0) -> str:
    c = client(address)
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        status = c.get_job_status(job_id)
        if status.is_terminal():
            return str(status.value)
        time.sleep(poll_s)
    raise TimeoutError(f"job {job_id} still {status.value} after {timeout_s:.0f}s")


def status(job_id: str, address: str | None = None) -> str:
    with jobs_api(address):
        return str(client(address).get_job_status(job_id).value)


def logs(job_id: str, address: str | None = None) -> str:
    with jobs_api(address):
        return client(address).get_job_logs(job_id)


def stop(job_id: str, address: str | None = None) -> bool:
    with jobs_api(address):
        return client(address).stop_job(job_id)


def list_jobs(address: str | None = None) -> list[dict]:
    with jobs_api(address):
        return [{"job_id": j.submission_id, "status": str(j.status.value), "entrypoint": j.entrypoint,
                 "start_time": j.start_time} for j in client(address).list_jobs()]
