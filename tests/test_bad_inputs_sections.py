"""The bad-input catalogue, continued: the optional sections and commands added after the core
(YAML files themselves, numbers, environments and tools, LoRA, model roles, judged evaluation,
synthesize, iterative DPO, cluster files, the Jobs API). Every case fails before Ray starts
anything: the checks run on the driver with no actor, so these tests need no Ray at all.
"""

from __future__ import annotations

import pytest

from conftest import cli_fails
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


# ------------------------------------------------------------------ environments and tools: a dry episode
def _env_cfg(policy, tmp_path, *extra):
    from conftest import tiny_overrides

    return load_config(overrides=tiny_overrides(policy, tmp_path / "run", "algorithm=grpo", "reward.kind=env",
                                                "env.call_timeout_s=0.5", *extra))


@pytest.mark.parametrize("env, message", [
    ("GarbageEnv", "env.environment='tests.multiturn_envs:GarbageEnv': a dry step after reset(a training row): "
                   "GarbageEnv.step returned int (42); expected an Observation or a string"),
    ("NaNRewardEnv", "NaNRewardEnv.step: Observation.reward must be a finite number, got nan"),
    ("RaisingEnv", "a dry RaisingEnv.step('') after reset(a training row) raised ValueError: the tool broke"),
    ("SlowEnv", "a dry SlowEnv.step('') after reset(a training row) gave no answer within env.call_timeout_s=0.5s"),
    ("StepWithoutTurn", "StepWithoutTurn.step() must take one argument (the turn text)"),
    ("GreetingResetEnv", "GreetingResetEnv.reset returned 'hello'; expected None or a list of"),
])
def test_an_environment_that_breaks_its_interface_fails_before_actors(tiny_policy, tmp_path, env, message):
    from conftest import assert_fails_before_actors

    cfg = _env_cfg(tiny_policy, tmp_path, f"env.environment=tests.multiturn_envs:{env}", "env.retries=0")
    assert_fails_before_actors(cfg, ValueError, message)


def test_a_transient_failure_gets_the_retries_the_actors_would_give(tiny_policy, tmp_path):
    from rlhf_ray.planning.checks_envs import check_env_dry

    cfg = _env_cfg(tiny_policy, tmp_path, "env.environment=tests.multiturn_envs:FlakyEnv", "env.retries=1")
    check_env_dry(cfg, {"prompt": "What is 1 + 1?", "answer": "2"})  # fails once, then answers
    cfg = _env_cfg(tiny_policy, tmp_path, "env.environment=tests.multiturn_envs:FlakyEnv", "env.retries=0")
    with pytest.raises(ValueError, match="raised ConnectionError: transient"):
        check_env_dry(cfg, {"prompt": "What is 1 + 1?", "answer": "2"})


@pytest.mark.parametrize("tool, message", [
    ("tests.multiturn_envs:NOT_A_TOOL", "env.tools: 'tests.multiturn_envs:NOT_A_TOOL' is a int, not a function"),
    ("tests.multiturn_envs:undocumented_tool", "env.tools: tool 'undocumented_tool': cannot build its JSON schema"),
])
def test_a_tool_that_is_no_typed_documented_function_fails_before_actors(tiny_policy, tmp_path, tool, message):
    from conftest import assert_fails_before_actors

    # env.system_prompt set: the prompts do not build the tools, the preflight's dry episode does
    cfg = _env_cfg(tiny_policy, tmp_path, f"env.tools=[{tool}]", "env.system_prompt=Use the tool.")
    assert_fails_before_actors(cfg, ValueError, message)


# ------------------------------------------------------------------ model folders by role, LoRA targets (no weights read)
@pytest.mark.parametrize("extra, message", [
    (["reward.kind=model", "reward.model_path={policy}"],
     "reward.model_path={policy}: the reward model must be a sequence classifier, but its config.json says "
     "architectures=['LlamaForCausalLM']"),
    (["model.path={reward}"], "model.path={reward}: the policy must be a causal LM, but its config.json says "
                              "architectures=['LlamaForSequenceClassification']"),
    (["reference.model_path={reward}"], "reference.model_path={reward}: the reference must be a causal LM"),
    (["learner.lora.targets=[q_proj, qkv_proj]"],
     "learner.lora.targets: ['qkv_proj'] are not linear modules of the model in {policy}; it has ['down_proj', "
     "'gate_proj', 'k_proj', 'lm_head', 'o_proj', 'q_proj', 'up_proj', 'v_proj']"),
    (["critic.lora.targets=[lm_head]"], "critic.lora.targets: ['lm_head'] are not linear modules of the model in {policy}"),
    (["trainer.eval.baseline=reference", "trainer.eval.judge=llm", "trainer.eval.judge_model_path={reward}"],
     "trainer.eval.judge_model_path={reward}: the judge (trainer.eval.judge=llm) must be a causal LM"),
    (["trainer.eval.baseline=reference", "trainer.eval.judge=reward", "trainer.eval.judge_model_path={policy}"],
     "trainer.eval.judge_model_path={policy}: the judge (trainer.eval.judge=reward) must be a sequence classifier"),
    (["trainer.eval.baseline={reward}", "trainer.eval.judge=reward", "reward.model_path={reward}"],
     "trainer.eval.baseline={reward}: the baseline must be a causal LM"),
])
def test_a_model_that_does_not_fit_its_role_fails_before_actors(tiny_policy, tiny_reward_model, tmp_path, extra, message):
    from conftest import assert_fails_before_actors, tiny_overrides

    fill = {"policy": tiny_policy, "reward": tiny_reward_model}
    overrides = [o.format(**fill) for o in ["algorithm=ppo", "model.path={policy}", *extra]]
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path / "run", *overrides))
    assert_fails_before_actors(cfg, ValueError, message.format(**fill))


def test_lora_targets_are_read_from_a_meta_device_model(tiny_policy, tiny_reward_model):
    from rlhf_ray.planning.checks_models import linear_names

    assert linear_names(tiny_policy, "causal_lm") == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj",
                                                      "down_proj", "lm_head"}
    assert "score" in linear_names(tiny_reward_model, "classifier") and "lm_head" not in linear_names(tiny_policy, "backbone")


def test_a_shipped_model_whose_export_fails_is_one_line(tmp_path, monkeypatch, capsys):
    from rlhf_ray.cli import main

    cache = tmp_path / "a_file"
    cache.write_text("")  # the cache root is a file: the export cannot make its folder
    monkeypatch.setenv("RLHF_RAY_CACHE", str(cache))
    assert main(["plan", "model.path=gemma3"]) == 2
    out = capsys.readouterr()
    assert f"[model] 'gemma3' is not prepared yet: exporting it to {cache}/models/gemma-3-270m once" in out.out
    assert out.err == (f"error: model 'gemma3': exporting the shipped model to {cache}/models/gemma-3-270m failed "
                       f"(NotADirectoryError: [Errno 20] Not a directory: '{cache}/models'); `rlhf-ray prepare-model "
                       "--model gemma3 --force` retries it and shows the whole error\n")


# ------------------------------------------------------------------ through the command line: exit 2, one line, no Ray
def test_outputs_that_cannot_be_written_fail_before_any_generation(tiny_policy, tmp_path, capsys):
    from conftest import tiny_overrides

    base = tiny_overrides(tiny_policy, tmp_path / "run")
    (tmp_path / "a_folder").mkdir()
    cli_fails(["synthesize", *base, "--out", str(tmp_path / "a_folder")], capsys,
              f"synthesize.out_file={tmp_path / 'a_folder'}: is a folder; name a file to write")
    cli_fails(["synthesize", *base, "--out", "/proc/rlhf_ray_synthetic.jsonl"], capsys,
              "synthesize.out_file=/proc/rlhf_ray_synthetic.jsonl: cannot write in /proc")
    (tmp_path / "run").mkdir()
    (tmp_path / "run" / "best.jsonl").mkdir()
    cli_fails(["best-of-n", *base, "raft.best_of_n_file=best.jsonl"], capsys,
              f"raft.best_of_n_file={tmp_path / 'run' / 'best.jsonl'}: is a folder")
    cli_fails(["make-traces", "--out", str(tmp_path / "a_folder")], capsys, f"--out={tmp_path / 'a_folder'}: is a folder")


def test_a_synthesize_candidate_that_is_no_causal_lm_fails_before_actors(tiny_policy, tiny_reward_model, tmp_path, capsys):
    from conftest import tiny_overrides

    cli_fails(["synthesize", *tiny_overrides(tiny_policy, tmp_path / "run", f"synthesize.models=[{tiny_policy}, "
                                             f"{tiny_reward_model}]")], capsys,
              f"synthesize.models[1]={tiny_reward_model}: the synthesize candidate must be a causal LM")


@pytest.mark.parametrize("extra, message", [
    (["synthesize.samples_per_prompt=1"], "algorithm=iterative_dpo pairs the policy's own answers to each prompt: "
                                          "synthesize.samples_per_prompt=1 must be ≥ 2"),
    (["iterative.prompts_per_round=4"], "iterative.prompts_per_round=4 makes at most one pair per prompt, fewer than "
                                        "the offline.batch_samples_global=8 pairs of one DPO step: no round would update"),
    (["task.name=jsonl", "task.train_file={rows}", "task.eval_file={rows}"],
     "reward.function='rlhf_ray.tasks.rewards:arithmetic_exact_match' scores each response against its row's reference "
     "answer, but no training row of task.name=jsonl has an 'answer'"),
])
def test_iterative_dpo_whose_reward_or_rounds_cannot_make_pairs_fails_before_actors(tiny_policy, tmp_path, capsys,
                                                                                     extra, message):
    from conftest import tiny_overrides

    rows = tmp_path / "no_answers.jsonl"
    rows.write_text('{"prompt": "Say hi."}\n{"prompt": "Say bye."}\n')
    overrides = tiny_overrides(tiny_policy, tmp_path / "run", "algorithm=iterative_dpo",
                               *[e.format(rows=rows) for e in extra])
    cli_fails(["train", *[o for o in overrides if not o.startswith("trainer.total_steps")]], capsys, message)


# ------------------------------------------------------------------ the Jobs API (cluster files: the battery,
# tests/bad_input_cases.py)
@pytest.fixture
def not_a_dashboard(tmp_path):
    from bad_input_cases import not_a_dashboard

    with not_a_dashboard(tmp_path / "served") as address:
        yield address


def test_jobs_api_addresses_that_cannot_work_are_one_line(capsys, not_a_dashboard):
    for address in ("ftp://127.0.0.1:1", "http://", "127.0.0.1", "http://127.0.0.1:8265/jobs"):
        cli_fails(["jobs", "list", "--address", address], capsys, f"error: address {address.rstrip('/')!r} is not the "
                  "Ray dashboard's http://HOST:PORT")
        cli_fails(["submit", "--address", address], capsys, f"error: address {address.rstrip('/')!r}")
    cli_fails(["jobs", "status", "some-job", "--address", "http://127.0.0.1:1"], capsys,
              "error: no Ray dashboard answers at http://127.0.0.1:1 ([Errno 111] Connection refused)")
    cli_fails(["jobs", "list", "--address", not_a_dashboard], capsys,
              f"error: {not_a_dashboard} is not a Ray dashboard (no /api/version): give the dashboard's address")
