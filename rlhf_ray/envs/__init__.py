"""Multi-turn environments: the interface (base), tools and the calculator, a guessing game, and the
turn format that turns observations into token ids."""

from rlhf_ray.envs.base import (EnvProtocolError, Environment, Observation, check_observation,
                                import_object)
from rlhf_ray.envs.calculator import CalculatorEnvironment, calculator
from rlhf_ray.envs.format import TurnFormat
from rlhf_ray.envs.guess import GuessNumberEnvironment
from rlhf_ray.envs.tools import (ToolEnvironment, format_tool_call, make_tool_environment, parse_tool_calls,
                                 tool_schema)

__all__ = ["Observation", "Environment", "EnvProtocolError", "ToolEnvironment", "CalculatorEnvironment",
           "GuessNumberEnvironment", "TurnFormat", "calculator", "tool_schema", "parse_tool_calls",
           "format_tool_call", "make_tool_environment", "check_observation", "import_object"]
