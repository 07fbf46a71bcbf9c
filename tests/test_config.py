"""The config schema: defaults, YAML + overrides, documentation. Its errors: tests/test_bad_inputs.py."""

from __future__ import annotations

import pytest

from rlhf_ray.config import Config
from rlhf_ray.config.loading import config_table, load_config, save_config

pytestmark = pytest.mark.unit


def test_yaml_then_overrides(tmp_path):
    f = tmp_path / "c.yaml"
    f.write_text("ppo:\n  epochs: 3\n  kl:\n    coef: 0.2\nlearner:\n  zero_stage: 2\n")
    cfg = load_config(f, ["ppo.kl.coef=0.5", "rollout.num_actors=2", "task.system_prompt=Be brief."])
    assert cfg.ppo.epochs == 3 and cfg.ppo.kl.coef == 0.5 and cfg.learner.zero_stage == 2
    assert cfg.rollout.num_actors == 2 and cfg.task.system_prompt == "Be brief."
    assert cfg.critic.lr == 5e-6 and cfg.learner.lr == 1e-6  # per-role defaults differ


def test_saved_config_round_trips(tmp_path):
    cfg = load_config(overrides=["ppo.kl.target=0.1", "trainer.seed=7"])
    save_config(cfg, tmp_path / "c.yaml")
    assert load_config(tmp_path / "c.yaml") == cfg


def test_every_field_documented_once():
    rows = config_table()
    assert len({k for k, _, _ in rows}) == len(rows)
    undocumented = [k for k, _, doc in rows if not doc]
    assert not undocumented
    assert ("critic.lr", "5e-06") in {(k, d) for k, d, _ in rows}


def test_default_config_is_valid():
    Config()


def test_token_budget_scoring_is_refused_under_zero3():
    import pytest

    from rlhf_ray.config import ConfigError

    assert load_config(overrides=["learner.micro_batch_tokens_per_actor=4096"]).learner.micro_batch_tokens_per_actor == 4096
    with pytest.raises(ConfigError, match=r"learner.micro_batch_tokens_per_actor=4096 .* learner.zero_stage=3"):
        load_config(overrides=["learner.micro_batch_tokens_per_actor=4096", "learner.zero_stage=3"])


def test_sequence_packing_on_off_survive_yaml_booleans(tmp_path):
    assert load_config(overrides=["model.sequence_packing=off"]).model.sequence_packing == "off"
    path = tmp_path / "c.yaml"
    path.write_text("model:\n  sequence_packing: on\n")
    assert load_config(str(path)).model.sequence_packing == "on"
