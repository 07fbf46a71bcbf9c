"""The bad-input catalogue, continued: the optional sections and commands added after the core
(YAML files themselves, numbers, environments and tools, LoRA, model roles, judged evaluation,
synthesize, iterative DPO, cluster files, the Jobs API). Every case fails before Ray starts
anything: the checks run on the driver with no actor, so these tests need no Ray at all.
"""

from __future__ import annotations

import pytest

from rlhf_ray.config import ConfigError
from rlhf_ray.config.loading import load_config

pytestmark = pytest.mark.unit


# ------------------------------------------------------------------ YAML files and numbers
def test_duplicate_yaml_keys_are_refused_with_both_lines(tmp_path):
    f = tmp_path / "dup.yaml"
    f.write_text("learner:\n  lr: 1.0e-5\n  zero_stage: 2\nppo:\n  epochs: 2\nlearner:\n  lr: 3.0e-4\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value) == (f"config file {f}: key 'learner' appears twice in one mapping (lines 1 and 6): keep one "
                            "(YAML readers keep the last silently)")
    f.write_text("learner:\n  lr: 1.0e-5\n  lr: 2.0e-5\n")
    with pytest.raises(ConfigError, match=r"key 'lr' appears twice in one mapping \(lines 2 and 3\)"):
        load_config(f)


def test_yaml_merge_keys_are_not_duplicates(tmp_path):
    from rlhf_ray.config.loading import read_yaml

    f = tmp_path / "merge.yaml"
    f.write_text("a: &x {b: 1}\nc:\n  <<: *x\n  d: 2\n")
    assert read_yaml(f) == {"a": {"b": 1}, "c": {"b": 1, "d": 2}}


def test_broken_yaml_names_the_line(tmp_path):
    f = tmp_path / "b.yaml"
    f.write_text("trainer:\n  seed: 1\nlearner: {lr: [\n")
    with pytest.raises(ConfigError) as e:
        load_config(f)
    assert str(e.value).startswith(f"config file {f} is not valid YAML (line 4: ")
    assert "\n" not in str(e.value)


@pytest.mark.parametrize("override, key, got", [
    ("learner.lr=.inf", "learner.lr", "inf"),
    ("learner.lr=.nan", "learner.lr", "nan"),
    ("rollout.temperature=.nan", "rollout.temperature", "nan"),
    ("learner.adam_betas=[0.9, .inf]", "learner.adam_betas.1", "inf"),
    ("env.failure_reward=-.inf", "env.failure_reward", "-inf"),
    ("ppo.kl.coef=.inf", "ppo.kl.coef", "inf"),
])
def test_non_finite_numbers_are_refused(override, key, got):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=[override])
    msg = str(e.value)
    assert f"{key}: Input should be a finite number (got {got})" in msg and "\n" not in msg, msg
