"""The environment interface: what a multi-turn trajectory talks to between the policy's turns.

A trajectory starts from a prompt row ({"prompt", "answer", ...}). The policy writes a turn; the turn
ends at the end-of-turn token or at one of the environment's stop strings (a tool call's closing tag).
The environment reads the turn's text and answers with an Observation: messages to append (rendered
with the model's chat template, or a tagged format; rlhf_ray.envs.format), an optional reward, and
whether the episode is over. The loop (rlhf_ray.envs.loop) stops at ``env.max_turns`` turns or
``env.max_total_tokens`` response tokens, whichever comes first.

Users implement ``Environment`` in a few lines and name it by import path (``env.environment``), like
reward functions. Tools are plain typed Python functions (``env.tools``), served by ToolEnvironment
(rlhf_ray.envs.tools). One Environment object serves one trajectory; environment actors
(rlhf_ray.roles.env) hold many at once.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

from rlhf_ray.config.imports import import_module_of

OBSERVATION_ROLE = "tool"  # the chat role an observation given as plain text is rendered with


class EnvProtocolError(TypeError):
    """An environment returned something that is not an observation (names the environment and the value)."""


@dataclass
class Observation:
    """The environment's answer to one policy turn.

    ``messages``: chat messages appended to the conversation, each {"role", "content"}; a plain
    string given as ``text`` is one message of role "tool". ``reward`` adds to the trajectory's
    score; ``done`` ends the episode. ``info`` holds integer counters the loop sums per trajectory
    and reports as metrics (ToolEnvironment counts ``tool_calls`` and ``tool_errors``)."""

    text: str | None = None
    reward: float = 0.0
    done: bool = False
    messages: list[dict] = field(default_factory=list)
    info: dict[str, int] = field(default_factory=dict)

    def all_messages(self) -> list[dict]:
        return ([{"role": OBSERVATION_ROLE, "content": self.text}] if self.text is not None else []) + self.messages


class Environment:
    """One episode. Subclasses set ``stop`` (strings that end a policy turn, besides the model's
    end-of-turn token) and implement ``step``; ``reset`` may return a first observation's messages
    (e.g. a game's opening) or None, and may extend the system prompt via ``system_prompt``."""

    stop: tuple[str, ...] = ()

    def reset(self, row: dict) -> list[dict] | None:
        """Called once with the trajectory's prompt row before the first turn."""
        self.row = row
        return None

    def system_prompt(self) -> str | None:
        """Text the prompt's system message carries for this environment (tool descriptions), or None."""
        return None

    def step(self, action: str) -> Observation:
        raise NotImplementedError

    def close(self) -> None:
        """Called when the trajectory ends (done, truncated or failed)."""


def import_object(path: str, key: str):
    """'package.module:name' → the object; errors name the config key, the path and what is wrong."""
    module, attr = import_module_of(path, key, "name")
    if not hasattr(module, attr):
        raise ValueError(f"{key}={path!r}: module {module.__name__!r} has no {attr!r}")
    return getattr(module, attr)


def check_observation(value, source: str) -> Observation:
    """An environment's ``step`` result as an Observation: a string is shorthand for a tool message;
    anything else that is not an Observation with well-typed fields is an EnvProtocolError naming
    ``source`` (the environment class) and what came back."""
    if isinstance(value, str):
        return Observation(text=value)
    if not isinstance(value, Observation):
        raise EnvProtocolError(f"{source}.step returned {type(value).__name__} ({value!r:.80}); "
                               "expected an Observation or a string")
    if value.text is not None and not isinstance(value.text, str):
        raise EnvProtocolError(f"{source}.step: Observation.text must be a string, got {type(value.text).__name__}")
    if isinstance(value.reward, bool) or not isinstance(value.reward, (int, float)) or not math.isfinite(value.reward):
        raise EnvProtocolError(f"{source}.step: Observation.reward must be a finite number, got {value.reward!r:.80}")
    if not isinstance(value.done, bool):
        raise EnvProtocolError(f"{source}.step: Observation.done must be a bool, got {value.done!r:.80}")
    if not isinstance(value.messages, list):
        raise EnvProtocolError(f"{source}.step: Observation.messages must be a list, got {type(value.messages).__name__}")
    if not isinstance(value.info, dict):
        raise EnvProtocolError(f"{source}.step: Observation.info must be a dict, got {type(value.info).__name__}")
    for m in value.messages:
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise EnvProtocolError(f"{source}.step: every message must be {{'role': str, 'content': str}}, got {m!r:.80}")
    for k, v in value.info.items():
        if isinstance(v, bool) or not isinstance(v, int):
            raise EnvProtocolError(f"{source}.step: Observation.info[{k!r}] must be an int counter, got {v!r:.80}")
    return value
