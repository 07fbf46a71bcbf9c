"""The config schema: defaults, YAML + overrides, and errors that name the key."""

from __future__ import annotations

import pytest

from rlhf_ray.config import Config, ConfigError, config_table, load_config, save_config


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


@pytest.mark.parametrize("override, message", [
    ("learner.zero_stag=3", "learner.zero_stag: unknown key (did you mean 'learner.zero_stage'?)"),
    ("ppo.epochs=many", "ppo.epochs: Input should be a valid integer"),
    ("learner.zero_stage=4", "learner.zero_stage: Input should be less than or equal to 3"),
    ("ppo.kl.estimator=k9", "ppo.kl.estimator: Input should be 'k1', 'k2' or 'k3'"),
    ("rollout.temperature=0", "rollout.temperature: Input should be greater than 0"),
    ("ppo.minibatch_samples_global=7", "ppo.minibatch_samples_global=7 must divide the samples per step"),
    ("learner.num_actors=3", "must split evenly over learner.num_actors=3"),
    ("algorithm=dpo", "algorithm=dpo trains on a dataset: set offline.train_file"),
    ("bogus=1", "bogus: unknown key"),
    ("ppo", "is not of the form a.b=value"),
])
def test_bad_values_name_the_key(override, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    assert message in str(e.value)


def test_bad_files(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(tmp_path / "missing.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        load_config(tmp_path / "list.yaml")
    (tmp_path / "broken.yaml").write_text("ppo: [1,\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        load_config(tmp_path / "broken.yaml")


def test_every_field_documented_once():
    rows = config_table()
    assert len({k for k, _, _ in rows}) == len(rows)
    undocumented = [k for k, _, doc in rows if not doc]
    assert not undocumented
    assert ("critic.lr", "5e-06") in {(k, d) for k, d, _ in rows}


def test_default_config_is_valid():
    Config()
