"""Every cluster file parses, has its required fields, and holds the run configs that name it."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_ray.cluster.layout import check_feasible, nodes_from_cluster_file
from rlhf_ray.config.loading import load_config

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
CLUSTER_FILES = sorted((ROOT / "cluster_configs").glob("*.yaml"))
RUN_CONFIGS = sorted((ROOT / "configs").rglob("*.yaml"))


def test_all_cluster_files_present():
    names = {f.name for f in CLUSTER_FILES}
    assert {"local.yaml", "aws-gpu.yaml", "gcp-gpu.yaml", "kuberay-raycluster.yaml", "kuberay-rayjob.yaml"} <= names


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_parses_with_required_fields(path):
    nodes = nodes_from_cluster_file(str(path))
    assert nodes and all({"CPU", "GPU"} <= set(n) for n in nodes)  # and custom resources, where a node type offers them
    if path.name != "local.yaml":
        assert sum(n["GPU"] for n in nodes) >= 8


def _named(cluster_file):
    out = []
    for cfg_path in RUN_CONFIGS:
        cfg = load_config(cfg_path)
        if cfg.ray.cluster_config and (ROOT / cfg.ray.cluster_config).resolve() == cluster_file.resolve():
            out.append((cfg_path, cfg))
    return out


@pytest.mark.parametrize("path", CLUSTER_FILES, ids=lambda p: p.name)
def test_cluster_file_holds_the_run_configs_naming_it(path):
    for cfg_path, cfg in _named(path):
        check_feasible(cfg, nodes_from_cluster_file(str(path)))


def test_every_gpu_cluster_file_holds_the_7b_example():
    cfg = load_config(ROOT / "configs/cluster/ppo_7b_8gpu.yaml")
    for path in CLUSTER_FILES:
        if path.name != "local.yaml":
            check_feasible(cfg, nodes_from_cluster_file(str(path)))


def test_every_run_config_names_an_existing_cluster_file():
    for cfg_path in RUN_CONFIGS:
        named = load_config(cfg_path).ray.cluster_config
        assert named is None or (ROOT / named).is_file(), f"{cfg_path}: ray.cluster_config {named} is missing"


def test_missing_field_is_named(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("cluster_name: x\nprovider: {type: aws}\nmax_workers: 1\nhead_node_type: h\n")
    with pytest.raises(ValueError, match="missing required field 'available_node_types'"):
        nodes_from_cluster_file(str(bad))
    bad.write_text("kind: RayCluster\nspec: {workerGroupSpecs: []}\n")
    with pytest.raises(ValueError, match="missing required field 'headGroupSpec'"):
        nodes_from_cluster_file(str(bad))


def test_too_small_cluster_is_rejected(tmp_path):
    small = tmp_path / "small.yaml"
    small.write_text((ROOT / "cluster_configs/aws-gpu.yaml").read_text().replace("GPU: 8}", "GPU: 4}")
                     .replace("    max_workers: 2\nhead_node_type", "    max_workers: 1\nhead_node_type"))
    assert sum(n["GPU"] for n in nodes_from_cluster_file(str(small))) == 4
    cfg = load_config(ROOT / "configs/cluster/ppo_7b_8gpu.yaml")
    with pytest.raises(ValueError, match="does not fit the cluster"):
        check_feasible(cfg, nodes_from_cluster_file(str(small)))
