"""Environments for the multi-turn tests, named by import path as users name theirs
(Ray workers import this module: the driver's sys.path reaches them)."""

from __future__ import annotations

import time

from rlhf_ray.envs.base import Environment, Observation


class TwoTurnEnv(Environment):
    """Answers the first turn with an observation, ends after the second with a reward of its length."""

    OBSERVATION = "seven"

    def reset(self, row):
        self.turn = 0

    def step(self, action):
        self.turn += 1
        if self.turn == 1:
            return Observation(text=self.OBSERVATION, info={"tool_calls": 1})
        return Observation(done=True, reward=len(action) / 10)


class NeverDoneEnv(Environment):
    """Never ends the episode: max_turns or the token budget must."""

    def __init__(self, observation: str = "again"):
        self.observation = observation

    def step(self, action):
        return Observation(text=self.observation)


class SlowEnv(Environment):
    def step(self, action):
        time.sleep(30)
        return Observation(done=True)


class RaisingEnv(Environment):
    def step(self, action):
        raise ValueError("the tool broke")


class GarbageEnv(Environment):
    def step(self, action):
        return 42


class NaNRewardEnv(Environment):
    def step(self, action):
        return Observation(done=True, reward=float("nan"))


class FlakyEnv(Environment):
    """Fails the first call of every trajectory, then ends it with reward 1: a retry recovers it."""

    def reset(self, row):
        self.calls = 0

    def step(self, action):
        self.calls += 1
        if self.calls == 1:
            raise ConnectionError("transient")
        return Observation(done=True, reward=1.0)


class FirstRowFailsLater(Environment):
    """The first prompt's environment raises after 0.3 s while the others go on turn after turn: the
    failure arrives while the engine is generating other trajectories' turns."""

    def reset(self, row):
        self.first = row["prompt"] == "What is 0 + 0?"

    def step(self, action):
        if self.first:
            time.sleep(0.3)
            raise ValueError("the tool broke")
        return Observation(text="again")


class StepWithoutTurn(Environment):
    """``step`` that takes no turn text: the interface is wrong."""

    def step(self):
        return Observation(done=True)


class GreetingResetEnv(Environment):
    """``reset`` returns a string where None or a list of messages is expected."""

    def reset(self, row):
        return "hello"

    def step(self, action):
        return Observation(done=True)


NOT_A_TOOL = 42  # env.tools naming something that is not a function


def undocumented_tool(x: int) -> int:
    return x
