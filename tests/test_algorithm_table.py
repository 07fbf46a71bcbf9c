"""The algorithm table is the one place an algorithm is defined: every row is consistent with the
registries, the roles' calls and the controllers, and has an example config that loads."""

from __future__ import annotations

from pathlib import Path

import pytest

from rlhf_ray.algorithms import ALGORITHMS
from rlhf_ray.algos import ADVANTAGE_ESTIMATORS, POLICY_LOSSES, PREFERENCE_LOSSES
from rlhf_ray.cluster.layout import active_roles
from rlhf_ray.config import ConfigError
from rlhf_ray.config.loading import load_config
from rlhf_ray.roles import PolicyLearner
from rlhf_ray.trainers import CONTROLLERS
from rlhf_ray.trainers.offline import UPDATES

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_row_has_an_example_config_that_loads(name):
    spec = ALGORITHMS[name]
    path = ROOT / spec.example
    assert path.is_file(), f"{name}: no example config {spec.example}"
    cfg = load_config(path)
    assert cfg.algorithm == name and cfg.spec is spec
    assert active_roles(cfg) == list(spec.roles)


@pytest.mark.parametrize("name", list(ALGORITHMS))
def test_every_row_names_registered_functions_and_a_real_call(name):
    spec = ALGORITHMS[name]
    assert spec.controller in CONTROLLERS
    if spec.update == "policy":  # the online controller calls PolicyLearner.train_policy for every row
        assert spec.controller == "online" and spec.estimator in ADVANTAGE_ESTIMATORS and spec.objective in POLICY_LOSSES
        assert callable(PolicyLearner.train_policy)
        assert ("critic" in spec.roles) == (spec.estimator == "gae")  # only GAE reads values
    else:
        assert spec.estimator is None and callable(UPDATES[spec.update])
    if spec.update == "preference":
        assert spec.objective in PREFERENCE_LOSSES
        assert spec.needs_reference == (spec.objective not in ("simpo", "orpo"))


def test_config_refuses_an_unknown_algorithm_with_a_suggestion():
    with pytest.raises(ConfigError, match=r"unknown algorithm 'cispo_x' \(did you mean 'cispo'\?\)"):
        load_config(overrides=["algorithm=cispo_x"])


def test_group_rows_need_two_samples_per_prompt():
    for name, spec in ALGORITHMS.items():
        if spec.group:
            with pytest.raises(ConfigError, match="samples_per_prompt must be ≥ 2"):
                load_config(overrides=[f"algorithm={name}", "ppo.samples_per_prompt=1",
                                       "ppo.minibatch_samples_global=16"])


def test_loss_aggregation_is_the_rows_unless_overridden():
    assert load_config(overrides=["algorithm=grpo"]).ppo.loss_agg == "seq-mean-token-mean"
    assert load_config(overrides=["algorithm=dr_grpo"]).ppo.loss_agg == "seq-mean-token-sum-norm"
    assert load_config(overrides=["algorithm=ppo"]).ppo.loss_agg == "token-mean"
    assert load_config(overrides=["algorithm=grpo", "ppo.loss_agg=token-mean"]).ppo.loss_agg == "token-mean"


def test_cdpo_needs_label_smoothing_before_any_actor():
    with pytest.raises(ConfigError, match="cdpo needs offline.label_smoothing > 0"):
        load_config(overrides=["algorithm=cdpo", "offline.train_file=x.jsonl"])
