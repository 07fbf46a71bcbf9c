"""Multi-turn rollouts on real actors: a tiny vLLM engine, environment actors, the PPO controller.

The trajectory a test environment shapes is checked token by token against what is computed here by
hand: observations tokenized once and appended, masks over the policy's tokens only, the learner's
log-probs equal to the engine's on every turn, GAE over the policy's tokens alone.
"""

from __future__ import annotations

import itertools
import math
import os
import signal
import time

import pytest
import torch

from rlhf_ray.config.loading import load_config
from rlhf_ray.envs.format import TurnFormat
from rlhf_ray.models.loading import load_tokenizer
from tests.conftest import tiny_overrides
from tests.multiturn_envs import TwoTurnEnv

pytestmark = pytest.mark.usefixtures("local_ray")


def _env_overrides(policy, run_dir, *extra):
    return tiny_overrides(policy, run_dir, "rollout.max_new_tokens=4", "env.max_total_tokens=64",
                          "model.max_prompt_tokens=64", *extra)


def _hand_gae(token_rewards, values, positions, gamma, lam):
    """GAE over the policy's positions alone, as a plain loop (the next value is the next policy token's)."""
    adv = {}
    running, next_v = 0.0, 0.0
    for t in reversed(positions):
        delta = token_rewards[t] + gamma * next_v - values[t]
        running = delta + gamma * lam * running
        adv[t] = running
        next_v = values[t]
    return adv


def test_two_turn_trajectories_match_the_hand_computation(tiny_policy, tmp_path):
    from rlhf_ray.data.batch import build_batch
    from rlhf_ray.trainers.estimate import penalize_and_estimate
    from rlhf_ray.trainers.ppo import PPOTrainer

    cfg = load_config(overrides=_env_overrides(
        tiny_policy, tmp_path, "algorithm=ppo", "env.environment=tests.multiturn_envs:TwoTurnEnv", "reward.kind=env",
        "ppo.whiten_advantages=false", "rollout.num_actors=2", "env.num_actors=2"))
    trainer = PPOTrainer.from_config(cfg)
    try:
        tok = load_tokenizer(tiny_policy)
        fmt = TurnFormat(tok)
        rows = trainer.train_set.rows[:4]
        prompts = trainer.train_set.ids[:4]
        gen = trainer.generate(prompts, greedy=False, seed=11, rows=rows)
        assert gen["turns"] == [2] * 4 and gen["finish_reasons"] == ["done"] * 4
        for p, ids, mask, logps, text in zip(prompts, gen["response_ids"], gen["policy_mask"], gen["logprobs"], gen["texts"]):
            n1 = mask.index(0)
            first, rest = ids[:n1], ids[n1:]
            obs = fmt.observation_ids([{"role": "tool", "content": TwoTurnEnv.OBSERVATION}], first[-1] == tok.eos_token_id)
            assert rest[:len(obs)] == obs  # appended as tokenized, once
            second = rest[len(obs):]
            assert 1 <= len(second) <= 4
            assert mask == [1] * len(first) + [0] * len(obs) + [1] * len(second)
            assert all(lp == 0.0 for lp, m in zip(logps, mask) if not m) and all(lp < 0 for lp, m in zip(logps, mask) if m)
            assert text == tok.decode(second, skip_special_tokens=True)
            # The text the learner reads is the chat template's own rendering of the conversation.
            convo = tok.decode(p + ids)
            assert f"<|im_start|>tool\n{TwoTurnEnv.OBSERVATION}<|im_end|>\n<|im_start|>assistant\n" in convo
        assert gen["env_reward"] == [len(t) / 10 for t in gen["texts"]]

        batch = build_batch(prompts, gen["response_ids"], tok.pad_token_id, gen["logprobs"], gen["policy_mask"])
        scores = trainer._score_passes(batch, list(range(4)), gen)
        assert torch.allclose(scores, torch.tensor(gen["env_reward"]))
        mask = batch["response_mask"]
        # Token-exact: the learner scores the engine's tokens of both turns, through the observation.
        gap = (batch["rollout_logprobs"] - batch["old_logprobs"]).abs() * mask
        assert float(gap.max()) < 1e-3, float(gap.max())
        beta = trainer.kl_ctl.value
        penalize_and_estimate(cfg, batch, scores, beta)
        for i in range(4):
            positions = mask[i].nonzero().flatten().tolist()
            kl = (batch["old_logprobs"][i] - batch["ref_logprobs"][i]).tolist()
            rewards = {t: -beta * kl[t] for t in positions}
            rewards[positions[-1]] += float(scores[i])  # the score goes on the policy's last token
            hand = _hand_gae(rewards, batch["old_values"][i].tolist(), positions, cfg.ppo.gamma, cfg.ppo.lam)
            for t in range(mask.shape[1]):
                want = hand.get(t, 0.0)  # observation tokens and padding: no advantage, no gradient
                assert math.isclose(float(batch["advantages"][i, t]), want, rel_tol=1e-4, abs_tol=1e-5), (i, t)

        metrics = trainer.step(1)
        assert metrics["env/turns_mean"] == 2 and metrics["env/tool_calls_mean"] == 1
        assert metrics["env/done_frac"] == 1 and metrics["env/observation_tokens_mean"] > 0
        assert metrics["check/logprob_gap_mean"] < 1e-3
        assert math.isfinite(metrics["learner/policy_loss"])

        # A lost environment actor is started again and the generation run anew.
        pid = trainer.env.get([trainer.env.actors[0].identity.remote()])[0]["pid"]
        os.kill(pid, signal.SIGKILL)
        time.sleep(1.0)
        gen = trainer.recovering("generate", lambda: trainer.generate(prompts, greedy=True, seed=0, rows=rows))
        assert gen["finish_reasons"] == ["done"] * 4 and trainer.restarts == 1
        assert trainer.env.get([trainer.env.actors[0].identity.remote()])[0]["pid"] != pid
    finally:
        trainer.shutdown()


@pytest.fixture(scope="module")
def engine(tiny_policy, tmp_path_factory):
    """One tiny vLLM rollout actor whose environment calls time out after 1 s and are retried once."""
    from rlhf_ray.cluster.groups import WorkerGroup
    from rlhf_ray.roles import Rollout

    cfg = _failure_cfg(tiny_policy, tmp_path_factory.mktemp("mt"), "env.on_failure=end")
    rollout = WorkerGroup("rollout", Rollout, cfg)
    rollout.get(rollout.call(Rollout.init_model, tiny_policy))
    yield rollout
    rollout.kill()


def _failure_cfg(policy, run_dir, *extra):
    return load_config(overrides=_env_overrides(
        policy, run_dir, "algorithm=grpo", "reward.kind=env", "env.environment=tests.multiturn_envs:TwoTurnEnv",
        "env.call_timeout_s=1", "env.retries=1", "env.max_turns=3", "env.max_total_tokens=64",
        "env.max_observation_tokens=16", *extra))


_env_groups = itertools.count()


def _trajectories(rollout, policy, environment: str, *extra, n: int = 3) -> dict:
    """n trajectories of the tiny prompts on ``rollout`` with a fresh environment actor of ``environment``."""
    from rlhf_ray.cluster.groups import WorkerGroup
    from rlhf_ray.data.prompts import encode_prompts
    from rlhf_ray.roles import EnvHost

    cfg = _failure_cfg(policy, "unused", f"env.environment={environment}", *extra)
    env = WorkerGroup("env", EnvHost, cfg, run_id=f"env{next(_env_groups)}")  # a fresh name: the last one may still be dying
    try:
        env.get(env.call(EnvHost.init_model, None))
        rows = [{"prompt": f"What is {i} + {i}?", "answer": str(2 * i)} for i in range(n)]
        prompts = encode_prompts(load_tokenizer(policy), rows, cfg, "test").ids
        out = rollout.get([rollout.actors[0].generate_trajectories.remote(rows, prompts, env.actors, False, 0, "f")])[0]
        assert env.get(env.call(EnvHost.open_count)) == [0]  # every trajectory's environment was closed
        return out
    finally:
        env.kill()


@pytest.mark.parametrize("environment, calls, message", [
    ("SlowEnv", ("env_timeouts", 2), "TimeoutError: no answer within env.call_timeout_s=1s"),
    ("RaisingEnv", ("env_errors", 2), "ValueError: the tool broke"),
    ("GarbageEnv", ("env_errors", 2), "GarbageEnv.step returned int (42)"),
    ("NaNRewardEnv", ("env_errors", 2), "NaNRewardEnv.step: Observation.reward must be a finite number"),
])
def test_a_failing_environment_ends_its_trajectory_with_a_named_error(engine, tiny_policy, environment, calls, message):
    out = _trajectories(engine, tiny_policy, f"tests.multiturn_envs:{environment}")
    assert out["failed"] == [True] * 3 and out["finish_reasons"] == ["env_failure"] * 3
    key, count = calls
    assert all(c[key] == count for c in out["counters"])  # the first call and its one retry
    for err in out["error"]:
        assert "environment step of trajectory" in err and "on env-0 failed after 2 attempt(s)" in err, err
        assert message in err, err
    assert all(t == 1 for t in out["turns"])


def test_a_retry_recovers_a_transient_failure(engine, tiny_policy):
    out = _trajectories(engine, tiny_policy, "tests.multiturn_envs:FlakyEnv")
    assert out["failed"] == [False] * 3 and out["finish_reasons"] == ["done"] * 3
    assert out["env_reward"] == [1.0] * 3 and all(c["env_errors"] == 1 for c in out["counters"])


def test_max_turns_and_the_token_budget_truncate_and_are_marked(engine, tiny_policy):
    out = _trajectories(engine, tiny_policy, "tests.multiturn_envs:NeverDoneEnv")
    assert out["finish_reasons"] == ["max_turns"] * 3 and out["turns"] == [3] * 3
    for mask in out["policy_mask"]:
        assert sum(1 for a, b in zip([0] + mask, mask) if a == 0 and b == 1) == 3  # three policy turns
    long = "many words " * 30  # cut to env.max_observation_tokens=16, still two of them overrun the 64-token budget
    out = _trajectories(engine, tiny_policy, "tests.multiturn_envs:NeverDoneEnv", f"env.kwargs={{observation: '{long}'}}")
    assert out["finish_reasons"] == ["max_tokens"] * 3 and all(t < 3 for t in out["turns"])
    assert all(len(ids) <= 64 for ids in out["response_ids"])
    assert all(c["observations_cut"] >= 1 for c in out["counters"])  # cut to env.max_observation_tokens


def test_on_failure_raise_stops_the_call_naming_actor_and_prompt(tiny_policy, tmp_path):
    import ray

    from rlhf_ray.cluster.groups import WorkerGroup
    from rlhf_ray.roles import Rollout

    cfg = _failure_cfg(tiny_policy, tmp_path, "env.on_failure=raise", "env.retries=0", "env.max_turns=40",
                       "env.max_total_tokens=400")
    rollout = WorkerGroup("rollout", Rollout, cfg, run_id="raise")  # beside the module's engine
    try:
        rollout.get(rollout.call(Rollout.init_model, tiny_policy))
        with pytest.raises(ray.exceptions.RayTaskError) as e:
            _trajectories(rollout, tiny_policy, "tests.multiturn_envs:FirstRowFailsLater", n=8)
        text = str(e.value)
        assert "EnvCallError" in text and "on env-0 failed after 1 attempt(s)" in text, text
        assert "prompt 'What is 0 + 0?'" in text and "ValueError: the tool broke" in text
        # The failed generation's turns still running were dropped: the engine's next call starts clean.
        out = _trajectories(rollout, tiny_policy, "tests.multiturn_envs:TwoTurnEnv")
        assert out["finish_reasons"] == ["done"] * 3 and out["turns"] == [2] * 3
    finally:
        rollout.kill()


def test_eval_command_runs_the_multi_turn_loop_on_a_prompt_file(tiny_policy, tmp_path, capsys):
    import json

    from rlhf_ray.cli import main

    prompts = tmp_path / "questions.jsonl"
    prompts.write_text("".join(json.dumps({"prompt": f"What is {i} + 1?", "answer": str(i + 1)}) + "\n" for i in range(3)))
    run_dir = tmp_path / "eval"
    args = _env_overrides(tiny_policy, run_dir, "algorithm=grpo", "env.environment=tests.multiturn_envs:TwoTurnEnv",
                          "reward.kind=env")
    assert main(["eval", *args, "--prompts", str(prompts)]) == 0
    out = capsys.readouterr().out
    assert "eval/env/turns_mean: 2.0000" in out and "eval/prompts: 3.0000" in out
    answers = [json.loads(line) for line in (run_dir / "eval_step00000.jsonl").read_text().splitlines()]
    assert [a["prompt"] for a in answers] == [f"What is {i} + 1?" for i in range(3)]
    for a in answers:  # the whole transcript, the observation inside it, and how the trajectory went
        assert f"<|im_start|>tool\n{TwoTurnEnv.OBSERVATION}<|im_end|>" in a["transcript"]
        assert a["turns"] == 2 and a["finish"] == "done" and math.isclose(a["score"], len(a["response"]) / 10, rel_tol=1e-6)
