"""The tiny PPO job submitted through the Ray Jobs API (`rlhf-ray submit`) to the multi-node test
cluster's head (tests/multinode.py): its driver joins that cluster and its roles land on the nodes
their pins name, seen through the cluster's state API. Slow: a cluster and a whole job.

The test cluster runs without token auth (Ray's in-process test nodes); tests/test_job_submission.py
covers the token through a `ray start` head."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from ray.util.state import list_actors

from conftest import tiny_overrides
from multinode import multinode_ray
from test_multinode import NODES, PINNED

ROOT = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


@pytest.mark.slow
def test_submitted_job_spreads_over_the_nodes(tiny_policy, tmp_path):
    run_dir = tmp_path / "run"
    with multinode_ray(NODES) as cluster:
        dashboard = f"http://{cluster.cluster.webui_url}"
        env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH") and k != "RAY_ADDRESS"}
        env["HOME"] = str(tmp_path)  # no ~/.ray/auth_token of this machine's own Ray sent along
        job = subprocess.run(
            [str(BIN / "rlhf-ray"), "submit", *tiny_overrides(tiny_policy, run_dir, *PINNED, "rollout.backend=hf"),
             "--address", dashboard, "--working-dir", str(ROOT), "--job-id", "multinode-ppo", "--follow"],
            capture_output=True, text=True, timeout=900, env=env)
        assert job.returncode == 0 and "job multinode-ppo SUCCEEDED" in job.stdout, (job.stdout + job.stderr)[-3000:]
        rows = list_actors(address=dashboard, filters=[("ray_namespace", "=", "rlhf_ray")], detail=True, limit=1000)
        where: dict[str, list[str]] = {}
        for a in sorted(rows, key=lambda a: a.name):
            role = a.name.rsplit("/", 1)[-1].rsplit("-", 1)[0]
            where.setdefault(role, []).append(cluster.name_of(a.node_id))
    assert sorted(where.pop("learner")) == ["trainer_a", "trainer_b"]
    assert where == {"rollout": ["engines", "engines"], "reward": ["scorers"], "reference": ["scorers"],
                     "critic": ["head"]}
    metrics = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in metrics] == [0, 1, 2]
