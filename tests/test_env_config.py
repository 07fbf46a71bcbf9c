"""Environment settings, the example configs, and the inputs a multi-turn run checks before any actor starts."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from rlhf_ray.cli import main
from rlhf_ray.config import ConfigError
from rlhf_ray.config.loading import load_config
from rlhf_ray.data.prompts import run_system_prompt, task_rows
from tests.conftest import assert_fails_before_actors, tiny_overrides

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_example_config_loads(path):
    cfg = load_config(str(path))
    assert cfg.unused_settings() == [], cfg.unused_settings()


def test_environment_configs_start_environment_actors():
    calc = load_config(str(ROOT / "configs/grpo_calculator.yaml"))
    assert calc.roles == ("rollout", "learner", "reference", "reward", "env")
    assert calc.max_response_tokens == 128
    guess = load_config(str(ROOT / "configs/grpo_guess_number.yaml"))
    assert "reward" not in guess.roles and "env" in guess.roles  # reward.kind=env: the game scores itself


@pytest.mark.parametrize("overrides, message", [
    (["reward.kind=env"], "reward.kind=env scores trajectories by their environment's rewards"),
    (["env.tools=[a:b]", "env.environment=x:y"], "set env.environment or env.tools, not both"),
    (["env.tools=[a:b]", "rollout.backend=hf"], "set rollout.backend=vllm"),
    (["env.kwargs={high: 3}"], "env.kwargs are the arguments of env.environment"),
    (["env.tools=[a:b]", "env.format=tagged", "env.observation_template=<r></r>"], "must contain {observation}"),
    (["env.max_turn=2"], "did you mean 'env.max_turns'"),
])
def test_bad_environment_settings_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message.replace("(", r"\(").replace("{", r"\{").replace("}", r"\}")):
        load_config(overrides=overrides)


def test_environment_settings_without_an_environment_are_reported_unused():
    cfg = load_config(overrides=["env.max_turns=3"])
    assert cfg.unused_settings() == ["env.max_turns: algorithm=ppo starts no env"]


@pytest.mark.parametrize("setting, message", [
    ("env.environment=no_such_module:Env", "env.environment='no_such_module:Env': cannot import module"),
    ("env.environment=rlhf_ray.envs.base:Observation", "is not a subclass of rlhf_ray.envs.base.Environment"),
    ("env.tools=[rlhf_ray.envs.calculator:no_such_tool]", "no_such_tool"),
])
def test_a_wrong_environment_fails_before_any_actor(tiny_policy, tmp_path, setting, message):
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path, "algorithm=grpo", setting))
    assert_fails_before_actors(cfg, ValueError, message)


def test_tool_descriptions_follow_the_task_system_prompt():
    cfg = load_config(overrides=["algorithm=grpo", "env.tools=[rlhf_ray.envs.calculator:calculator]",
                                 "task.system_prompt=Be brief."])
    system = run_system_prompt(cfg)
    assert system.startswith("Be brief.\n\n") and '"name": "calculator"' in system
    cfg = load_config(overrides=["algorithm=grpo", "env.tools=[rlhf_ray.envs.calculator:calculator]",
                                 "env.system_prompt=Use the calculator."])
    assert run_system_prompt(cfg) == "Use the calculator."


def test_make_traces_writes_training_questions_only(tmp_path, capsys):
    out = tmp_path / "traces.jsonl"
    config = str(ROOT / "configs/grpo_calculator.yaml")
    assert main(["make-traces", config, "task.n_train=20", "--out", str(out), "--n", "10"]) == 0
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 20
    held_out = {r["prompt"] for r in _eval_rows(config)}
    questions = {r["messages"][1]["content"] for r in rows}
    assert len(questions) == 10 and not questions & held_out
    assert rows[0]["messages"][0] == {"role": "system", "content": run_system_prompt(load_config(config))}
    assert main(["make-traces", config, "task.n_train=5", "--out", str(out), "--n", "10"]) == 2
    assert "more than the task's task.n_train=5" in capsys.readouterr().err


def _eval_rows(config: str) -> list[dict]:
    return task_rows(load_config(config))[1][0]


def test_trajectory_metrics_by_hand():
    from rlhf_ray.envs.metrics import trajectory_metrics

    gen = {"turns": [2, 1, 3, 1], "finish_reasons": ["done", "env_failure", "max_turns", "max_tokens"],
           "env_reward": [1.0, 0.0, 0.5, 0.0], "failed": [False, True, False, False],
           "counters": [{"tool_calls": 1, "observation_tokens": 10}, {"env_errors": 2},
                        {"tool_calls": 2, "tool_errors": 1, "observation_tokens": 20, "env_timeouts": 1}, {}],
           "calls": [{"engine_busy_s": 3.0, "engine_idle_s": 1.0}]}
    m = trajectory_metrics(gen)
    assert m["env/turns_mean"] == 7 / 4 and m["env/tool_calls_mean"] == 3 / 4 and m["env/tool_call_rate"] == 2 / 4
    assert m["env/tool_errors_mean"] == 1 / 4 and m["env/observation_tokens_mean"] == 30 / 4
    assert m["env/failures"] == 1 and m["env/call_errors"] == 2 and m["env/call_timeouts"] == 1
    assert m["env/done_frac"] == 1 / 4 and m["env/truncated_max_turns_frac"] == 1 / 4
    assert m["env/truncated_max_tokens_frac"] == 1 / 4 and m["env/reward_mean"] == 1.5 / 4
    assert m["env/engine_idle_s"] == 1.0 and m["env/engine_idle_frac"] == 0.25


def test_a_trajectory_longer_than_the_model_fails_before_any_actor(tiny_policy, tmp_path):
    cfg = load_config(overrides=tiny_overrides(tiny_policy, tmp_path, "algorithm=grpo", "env.max_total_tokens=500",
                                               "env.tools=[rlhf_ray.envs.calculator:calculator]",
                                               "env.system_prompt=Calculate.", "model.max_prompt_tokens=400"))
    assert_fails_before_actors(cfg, ValueError, "model.max_prompt_tokens + env.max_total_tokens = 900 tokens, more than "
                                                "the 512 positions")
