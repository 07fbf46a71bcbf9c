"""The bad-input catalogue: each bad input, the error it gets, and that it comes before any actor.

Every entry asserts the message names the field, file or row and what is wrong. Entries that go
through a controller also assert that no Ray actor was started for them.
"""

from __future__ import annotations

import gzip
import json

import pytest

from conftest import assert_fails_before_actors as _assert_fails_before_actors
from conftest import tiny_overrides
from rlhf_ray.config import ConfigError
from rlhf_ray.config.loading import load_config


def bad_reward_count(prompts, responses, answers):  # used by import path below
    return [1.0]


def bad_reward_nan(prompts, responses, answers):
    return [float("nan")] * len(responses)


def reward_two_arguments(prompts, responses):
    return [0.0] * len(responses)


# ------------------------------------------------------------------ config (no controller needed)
CONFIG_CASES = [
    ("unknown top-level key", ["bogus=1"], "bogus: unknown key"),
    ("override without '='", ["ppo"], "override 'ppo' is not of the form a.b=value"),
    ("ZeRO stage out of range", ["learner.zero_stage=4"], "learner.zero_stage: Input should be less than or equal to 3"),
    ("unknown key", ["learner.zero_stag=3"], "learner.zero_stag: unknown key (did you mean 'learner.zero_stage'?)"),
    ("misspelt section", ["rolout.num_actors=2"], "rolout: unknown key (did you mean 'rollout'?)"),
    ("wrong type", ["rollout.num_actors=two"], "rollout.num_actors: Input should be a valid integer"),
    ("out of range", ["rollout.top_p=1.5"], "rollout.top_p: Input should be less than or equal to 1"),
    ("negative lr", ["learner.lr=-1"], "learner.lr: Input should be greater than 0"),
    ("batch not divisible by data-parallel size", ["learner.num_actors=3"],
     "ppo.minibatch_samples_global=32 must split evenly over learner.num_actors=3"),
    ("minibatch not dividing the step", ["ppo.minibatch_samples_global=48"],
     "ppo.minibatch_samples_global=48 must divide the samples per step"),
    ("group method with one sample", ["algorithm=grpo", "ppo.samples_per_prompt=1", "ppo.minibatch_samples_global=16"],
     "ppo.samples_per_prompt must be ≥ 2"),
    ("offline method without data", ["algorithm=dpo"], "set offline.train_file"),
    ("file task without file", ["task.name=gsm8k"], "set task.train_file"),
    ("unknown role in colocate", ["placement.colocate=[[actor, reference]]"], "unknown roles ['actor']"),
    ("unknown algorithm", ["algorithm=ppo2"], "unknown algorithm 'ppo2' (did you mean 'ppo'?)"),
    ("tensor parallel wider than the GPUs of an engine", ["rollout.tensor_parallel_size=2"],
     "rollout.tensor_parallel_size=2 shards each engine over 2 GPUs: set rollout.num_gpus_per_actor=2"),
    ("http reward without a url", ["reward.kind=http"], "reward.kind=http needs reward.url"),
    ("a key the algorithm's loop does not read", ["algorithm=dpo", "offline.train_file=x.jsonl", "trainer.total_steps=4"],
     "trainer.total_steps is not read by algorithm=dpo (offline loop): set offline.max_steps instead"),
    ("RAFT's length is its rounds", ["algorithm=raft", "trainer.total_steps=4"],
     "trainer.total_steps is not read by algorithm=raft (raft loop): set raft.rounds instead"),
    ("overwrite with resume", ["trainer.overwrite=true", "trainer.resume=auto"],
     "trainer.overwrite=true starts afresh: it cannot go with trainer.resume=auto"),
]


@pytest.mark.parametrize("name, overrides, message", CONFIG_CASES, ids=[c[0] for c in CONFIG_CASES])
def test_config_errors(name, overrides, message):
    with pytest.raises(ConfigError) as e:
        load_config(overrides=overrides)
    assert message in str(e.value)


def test_config_file_missing_or_broken(tmp_path):
    with pytest.raises(ConfigError, match="config file .*nope.yaml does not exist"):
        load_config(tmp_path / "nope.yaml")
    (tmp_path / "b.yaml").write_text("learner: {lr: [\n")
    with pytest.raises(ConfigError, match="b.yaml is not valid YAML"):
        load_config(tmp_path / "b.yaml")
    (tmp_path / "list.yaml").write_text("- 1\n- 2\n")
    with pytest.raises(ConfigError, match="must hold a mapping of sections"):
        load_config(tmp_path / "list.yaml")


# ------------------------------------------------------------------ through the PPO controller
def test_missing_model_folder(tiny_policy, tmp_path):
    cfg = load_config(overrides=tiny_overrides(str(tmp_path / "no_model"), tmp_path / "run"))
    _assert_fails_before_actors(cfg, FileNotFoundError, f"folder not found: '{tmp_path / 'no_model'}'")


def test_model_folder_without_config(tmp_path):
    (tmp_path / "m").mkdir()
    cfg = load_config(overrides=tiny_overrides(str(tmp_path / "m"), tmp_path / "run"))
    _assert_fails_before_actors(cfg, FileNotFoundError, "No config.json in model folder")


def test_model_folder_without_tokenizer(tiny_policy, tmp_path):
    import shutil

    m = tmp_path / "m"
    shutil.copytree(tiny_policy, m)
    for f in m.glob("tokenizer*"):
        f.unlink()
    cfg = load_config(overrides=tiny_overrides(str(m), tmp_path / "run"))
    _assert_fails_before_actors(cfg, FileNotFoundError, "No tokenizer files")


@pytest.mark.parametrize("function, message", [
    ("no_such_module:f", "cannot import module 'no_such_module'"),
    ("rlhf_ray.tasks.rewards:nope", "has no function 'nope'"),
    ("rlhf_ray.tasks.rewards", "must look like 'package.module:function'"),
])
def test_reward_function_cannot_be_imported(tiny_policy, tmp_path, function, message):
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", f"reward.function={function}"))
    _assert_fails_before_actors(cfg, ValueError, message)


def test_reward_model_without_path(tiny_policy, tmp_path):
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", "reward.kind=model"))
    _assert_fails_before_actors(cfg, ValueError, "reward.kind=model needs reward.model_path")


def test_prompt_longer_than_limit(tiny_policy, tmp_path):
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", "model.max_prompt_tokens=5"))
    _assert_fails_before_actors(cfg, ValueError, "row 0: prompt is")


def test_prompt_file_problems(tiny_policy, tmp_path):
    empty = tmp_path / "empty.jsonl"
    empty.write_text("")
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", "task.name=jsonl",
                                               f"task.train_file={empty}"))
    _assert_fails_before_actors(cfg, ValueError, "empty.jsonl")
    broken = tmp_path / "broken.jsonl.gz"
    with gzip.open(broken, "wt") as f:
        f.write(json.dumps({"prompt": "1+1?"}) + "\n{not json\n")
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", "task.name=jsonl",
                                               f"task.train_file={broken}"))
    _assert_fails_before_actors(cfg, ValueError, "line 2")
    nofield = tmp_path / "nofield.jsonl"
    nofield.write_text(json.dumps({"question": "1+1?"}) + "\n")
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", "task.name=jsonl",
                                               f"task.train_file={nofield}"))
    _assert_fails_before_actors(cfg, ValueError, "prompt")


def test_layout_the_cluster_cannot_hold(local_ray, tiny_policy, tmp_path):
    from rlhf_ray.cluster.layout import InfeasibleLayout

    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", "rollout.num_gpus_per_actor=64"))
    _assert_fails_before_actors(cfg, InfeasibleLayout, "does not fit the cluster")


# ------------------------------------------------------------------ reward answers and checkpoints
def test_reward_answers_are_checked():
    from rlhf_ray.rewards.functions import check_scores

    with pytest.raises(ValueError, match="returned 1 scores for 3 samples"):
        check_scores(bad_reward_count([], ["a", "b", "c"], []), 3, "reward.function x")
    with pytest.raises(ValueError, match=r"non-finite scores at samples \[0, 1\]"):
        check_scores(bad_reward_nan([], ["a", "b"], []), 2, "reward.function x")


def test_resume_from_something_that_is_not_a_checkpoint(tmp_path):
    from rlhf_ray.runs.checkpoint import resolve_resume

    with pytest.raises(FileNotFoundError, match="trainer.resume=.*not a complete checkpoint"):
        resolve_resume(str(tmp_path), tmp_path)
    assert resolve_resume("auto", tmp_path) is None and resolve_resume("none", tmp_path) is None


# ------------------------------------------------------------------ the preflight: caught before any actor
def test_weights_that_cannot_be_read(tiny_policy, tmp_path):
    import shutil

    m = tmp_path / "m"
    shutil.copytree(tiny_policy, m)
    weights = m / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:1000])  # a download cut short
    cfg = load_config(overrides=tiny_overrides(str(m), tmp_path / "run"))
    _assert_fails_before_actors(cfg, ValueError, f"{weights}: header length")
    weights.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{not json}......")
    _assert_fails_before_actors(cfg, ValueError, "header is not valid JSON")


def test_reward_function_with_the_wrong_signature(tiny_policy, tmp_path):
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run",
                                               "reward.function=test_bad_inputs:reward_two_arguments"))
    _assert_fails_before_actors(cfg, ValueError, "reward.function='test_bad_inputs:reward_two_arguments': a call "
                                "with one row f(prompts=[...], responses=[''], answers=[...]) raised TypeError")
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run",
                                               "reward.function=test_bad_inputs:bad_reward_nan"))
    _assert_fails_before_actors(cfg, ValueError, "returned non-finite scores at samples [0]")


def test_reward_token_variable_missing(tiny_policy, tmp_path, monkeypatch):
    monkeypatch.delenv("RLHF_RAY_TEST_TOKEN", raising=False)
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", "reward.kind=http",
                                               "reward.url=http://127.0.0.1:9/score", "reward.token_env=RLHF_RAY_TEST_TOKEN"))
    _assert_fails_before_actors(cfg, ValueError, "reward.token_env='RLHF_RAY_TEST_TOKEN': environment variable "
                                "RLHF_RAY_TEST_TOKEN is not set (or empty) on this machine")


def test_more_cpus_than_the_machine_has(tiny_policy, tmp_path):
    import os

    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", "ray.local_num_cpus=null",
                                               f"learner.num_cpus_per_actor={os.cpu_count() + 1}"))
    msg = _assert_fails_before_actors(cfg, ValueError, "the actor layout does not fit this machine")
    assert f"node 0: {os.cpu_count()} CPU" in msg


def test_run_directory_that_cannot_be_written(tiny_policy):
    from rlhf_ray.runs.rundir import RunDirError

    cfg = load_config(overrides=tiny_overrides(tiny_policy, "/sys/rlhf_ray_run"))
    _assert_fails_before_actors(cfg, RunDirError, "trainer.run_dir=/sys/rlhf_ray_run: cannot write in /sys")


def test_prompt_file_that_is_not_utf8(tiny_policy, tmp_path):
    bad = tmp_path / "latin1.jsonl"
    bad.write_bytes(json.dumps({"prompt": "1+1?"}).encode() + b"\n" + '{"prompt": "caf\u00e9"}'.encode("latin-1") + b"\n")
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", "task.name=jsonl",
                                               f"task.train_file={bad}"))
    _assert_fails_before_actors(cfg, ValueError, "latin1.jsonl line 2: not UTF-8 (byte 0xe9")


def test_settings_the_algorithm_does_not_read_are_named():
    cfg = load_config(overrides=["algorithm=grpo", "critic.lr=1e-5", "critic.num_actors=2"])
    assert cfg.unused_settings() == ["critic.lr, num_actors: algorithm=grpo starts no critic"]
    assert load_config(overrides=["algorithm=grpo", "critic.lr=5e-6"]).unused_settings() == []  # its default


def test_submit_runs_the_local_preflight_before_contacting_a_cluster(capsys, tmp_path):
    """`rlhf-ray submit` with a bad reward path or a non-UTF-8 prompt file fails in the terminal (exit 2),
    before any request to the address (nothing listens on port 1)."""
    from rlhf_ray.cli import main

    assert main(["submit", "reward.function=no_such_module:f", "--address", "http://127.0.0.1:1"]) == 2
    assert "cannot import module 'no_such_module'" in capsys.readouterr().err
    bad = tmp_path / "p.jsonl"
    bad.write_bytes(b'{"prompt": "caf\xe9"}\n')
    assert main(["submit", "task.name=jsonl", f"task.train_file={bad}", "--address", "http://127.0.0.1:1"]) == 2
    assert "p.jsonl line 1: not UTF-8" in capsys.readouterr().err
