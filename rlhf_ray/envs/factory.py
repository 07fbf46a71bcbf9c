"""The environment the config names: a class by import path, or a ToolEnvironment over typed functions."""

from __future__ import annotations

from rlhf_ray.config import EnvConfig
from rlhf_ray.envs.base import Environment, import_object
from rlhf_ray.envs.tools import make_tool_environment


def make_environment(ec: EnvConfig) -> Environment:
    """A fresh Environment for one trajectory; errors name the config key."""
    if ec.tools:
        return make_tool_environment(ec.tools)
    cls = import_object(ec.environment, "env.environment")
    if not (isinstance(cls, type) and issubclass(cls, Environment)):
        raise ValueError(f"env.environment={ec.environment!r} is not a subclass of rlhf_ray.envs.base.Environment")
    try:
        return cls(**ec.kwargs)
    except TypeError as e:
        raise ValueError(f"env.environment={ec.environment!r} with env.kwargs={ec.kwargs}: {e}") from None
