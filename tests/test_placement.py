"""Placement from config: feasibility before any actor starts, colocated and split layouts."""

from __future__ import annotations

import pytest

from rlhf_ray.cluster.layout import InfeasibleLayout, check_feasible, plan
from rlhf_ray.config.loading import load_config

NODE_8GPU = {"CPU": 64, "GPU": 8}


def _cfg(*overrides):
    half_cpu = [f"{r}.num_cpus_per_actor=0.5" for r in ("rollout", "learner", "critic", "reference", "reward")]
    return load_config(overrides=["ppo.minibatch_samples_global=16", *half_cpu, *overrides])


def test_plan_colocates_rank_by_rank():
    cfg = _cfg("learner.num_actors=2", "reference.num_actors=2", "learner.num_gpus_per_actor=0.5",
               "reference.num_gpus_per_actor=0.5", "placement.colocate=[[learner, reference]]")
    groups = {tuple(p.roles): p for p in plan(cfg)}
    assert groups[("learner", "reference")].bundles == [{"CPU": 1.0, "GPU": 1.0}] * 2
    assert set(groups) == {("learner", "reference"), ("rollout",), ("critic",), ("reward",)}


def test_seven_gpu_layout_fits_one_8gpu_node_and_not_two_4gpu_ones_when_strict():
    cfg = _cfg("rollout.num_actors=2", "rollout.num_gpus_per_actor=1", "learner.num_actors=2",
               "learner.num_gpus_per_actor=1", "critic.num_actors=2", "critic.num_gpus_per_actor=1",
               "reference.num_gpus_per_actor=1", "placement.strategy=STRICT_PACK")
    check_feasible(cfg, [NODE_8GPU])
    check_feasible(cfg, [{"CPU": 32, "GPU": 4}] * 2)  # each role's group fits on one node
    with pytest.raises(InfeasibleLayout) as e:
        check_feasible(cfg, [{"CPU": 32, "GPU": 1}] * 4)
    msg = str(e.value)
    assert "asked (4 CPU, 7 GPU in all)" in msg and "node 0: 32 CPU, 1 GPU" in msg
    assert "rollout: 2 × (0.5 CPU, 1 GPU)" in msg


def test_infeasible_layout_is_explained():
    cfg = _cfg("learner.num_actors=16", "learner.num_gpus_per_actor=1", "ppo.minibatch_samples_global=64")
    with pytest.raises(InfeasibleLayout, match=r"learner.*16 × \(0.5 CPU, 1 GPU\)"):
        check_feasible(cfg, [NODE_8GPU])


def test_custom_resources_pin_roles_to_the_nodes_that_offer_them():
    cfg = _cfg("learner.num_actors=2", "learner.resources_per_actor={trainer_node: 1}",
               "reference.resources_per_actor={scorer_node: 1}", "placement.colocate=[[rollout, reward]]",
               "rollout.resources_per_actor={engine_node: 1}", "reward.resources_per_actor={engine_node: 0.5}")
    groups = {tuple(p.roles): p for p in plan(cfg)}
    assert groups[("learner",)].bundles == [{"CPU": 0.5, "GPU": 0.0, "trainer_node": 1.0}] * 2
    assert groups[("rollout", "reward")].bundles == [{"CPU": 1.0, "GPU": 0.0, "engine_node": 1.5}]
    plain = {"CPU": 8, "GPU": 0}
    nodes = [plain, {**plain, "trainer_node": 1}, {**plain, "trainer_node": 1}, {**plain, "engine_node": 2},
             {**plain, "scorer_node": 1}]
    check_feasible(cfg, nodes)
    with pytest.raises(InfeasibleLayout, match=r"learner needing 0.5 CPU, 0 GPU, 1 trainer_node"):
        check_feasible(cfg, nodes[:2] + nodes[3:])  # one trainer node for two ranks


def test_moved_key_names_its_new_place():
    from rlhf_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"trainer.weight_sync_bucket_mb: moved to sync.bucket_mb"):
        load_config(overrides=["trainer.weight_sync_bucket_mb=64"])


def test_colocated_roles_need_equal_counts():
    cfg = _cfg("learner.num_actors=2", "placement.colocate=[[learner, reference]]")
    with pytest.raises(InfeasibleLayout, match="learner.num_actors=2, reference.num_actors=1"):
        plan(cfg)


def test_unknown_role_in_colocate_is_a_config_error():
    from rlhf_ray.config import ConfigError

    with pytest.raises(ConfigError, match=r"unknown roles \['policy'\]"):
        _cfg("placement.colocate=[[policy, reference]]")


def _landed(local_ray, cfg, classes):
    from rlhf_ray.cluster.groups import shutdown_groups, start_groups

    groups = start_groups(cfg, classes, "placement-test")
    try:
        return {role: g.get(g.call(g.worker_cls.identity)) for role, g in groups.items()}
    finally:
        shutdown_groups(groups)


def test_colocated_learner_and_reference_share_gpus(local_ray):
    from rlhf_ray.roles import PolicyLearner, Reference

    cfg = _cfg("learner.num_actors=2", "reference.num_actors=2", "learner.num_gpus_per_actor=0.5",
               "reference.num_gpus_per_actor=0.5", "placement.colocate=[[learner, reference]]")
    where = _landed(local_ray, cfg, {"learner": PolicyLearner, "reference": Reference})
    learner_gpus = [w["gpu_ids"] for w in where["learner"]]
    assert learner_gpus == [w["gpu_ids"] for w in where["reference"]]
    assert len({tuple(g) for g in learner_gpus}) == 2 and all(len(g) == 1 for g in learner_gpus)
    assert [w["rank"] for w in where["learner"]] == [0, 1]


def test_split_roles_get_their_own_gpus(local_ray):
    from rlhf_ray.roles import PolicyLearner, Rollout

    cfg = _cfg("learner.num_actors=2", "rollout.num_actors=2", "learner.num_gpus_per_actor=1",
               "rollout.num_gpus_per_actor=1", "placement.strategy=SPREAD")
    where = _landed(local_ray, cfg, {"learner": PolicyLearner, "rollout": Rollout})
    gpus = [tuple(w["gpu_ids"]) for role in ("learner", "rollout") for w in where[role]]
    assert len(set(gpus)) == 4 and all(len(g) == 1 for g in gpus)
    assert {w["node_ip"] for ws in where.values() for w in ws} == {"127.0.0.1"}


def test_layout_beyond_the_cluster_fails_before_any_actor(local_ray):
    from rlhf_ray.cluster.groups import start_groups
    from rlhf_ray.roles import Rollout

    cfg = _cfg("rollout.num_actors=8", "rollout.num_gpus_per_actor=1")
    before = len(local_ray.util.list_named_actors(all_namespaces=True))
    with pytest.raises(InfeasibleLayout, match="8 × \\(0.5 CPU, 1 GPU\\)"):
        start_groups(cfg, {"rollout": Rollout}, "too-big")
    assert len(local_ray.util.list_named_actors(all_namespaces=True)) == before


def test_strict_spread_needs_a_node_per_bundle():
    cfg = _cfg("rollout.num_actors=3", "placement.strategy=STRICT_SPREAD")
    check_feasible(cfg, [{"CPU": 8, "GPU": 0}] * 3)
    with pytest.raises(InfeasibleLayout, match=r"rollout needing 0.5 CPU.*STRICT_SPREAD: one bundle of a group per node"):
        check_feasible(cfg, [{"CPU": 8, "GPU": 0}] * 2)  # CPUs enough for all three, nodes not
