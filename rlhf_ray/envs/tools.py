"""Tools as plain typed Python functions, called by the policy in the Hermes format.

The policy writes ``<tool_call>\\n{"name": ..., "arguments": {...}}\\n</tool_call>`` (Hermes /
Qwen2.5, the format vLLM's hermes parser and TRL read), and the turn stops at the closing tag.
ToolEnvironment runs every call in the turn and answers with one "tool" message each; a turn
without a call is the final answer, which the reward role scores. Whatever the policy writes, the
environment answers with text ("error: ..." saying what is wrong) rather than raising: sampled
garbage is the normal case early in training, and the policy can only learn from an answer.

Schemas come from transformers.utils.get_json_schema (name, Google-style docstring, type hints),
the same schemas chat templates render, so SFT traces and the system prompt agree.
"""

from __future__ import annotations

import inspect
import json
import types
import typing
from dataclasses import dataclass

from transformers.utils import get_json_schema
from transformers.utils.chat_template_utils import DocstringParsingException, TypeHintParsingException

from rlhf_ray.envs.base import OBSERVATION_ROLE, Environment, Observation, import_object

TOOL_CALL_OPEN = "<tool_call>"
TOOL_CALL_CLOSE = "</tool_call>"
ERROR_PREFIX = "error: "

_JSON_TYPES = {bool: "boolean", int: "integer", float: "number", str: "string", list: "array", dict: "object",
               type(None): "null"}


@dataclass(frozen=True)
class ToolCall:
    """One well-formed call: the tool's name and its keyword arguments."""

    name: str
    arguments: dict


@dataclass(frozen=True)
class ToolCallError:
    """A <tool_call> block that is not a call; ``message`` says why, ``text`` is what was inside the tags."""

    message: str
    text: str


def tool_schema(fn) -> dict:
    """The JSON schema chat templates and TRL expect for ``fn`` ({"type": "function", "function": {...}})."""
    try:
        return get_json_schema(fn)
    except (DocstringParsingException, TypeHintParsingException) as e:
        name = getattr(fn, "__name__", repr(fn))
        raise ValueError(f"tool {name!r}: cannot build its JSON schema: {e} (a tool needs type hints on every "
                         "argument and a Google-style docstring with an 'Args:' section describing each)") from None


def format_tool_call(name: str, arguments: dict) -> str:
    """The exact text the policy is taught to write for one call (SFT traces use it)."""
    return f"{TOOL_CALL_OPEN}\n{json.dumps({'name': name, 'arguments': arguments})}\n{TOOL_CALL_CLOSE}"


def _json_type(value) -> str:
    return _JSON_TYPES.get(type(value), type(value).__name__)


def _parse_call(body: str) -> ToolCall | ToolCallError:
    try:
        obj = json.loads(body)
    except json.JSONDecodeError as e:
        return ToolCallError(f"the tool call is not valid JSON ({e.msg} at character {e.pos})", body)
    if not isinstance(obj, dict):
        return ToolCallError(f'the tool call must be a JSON object {{"name": ..., "arguments": {{...}}}}, '
                             f"got {_json_type(obj)}", body)
    name = obj.get("name")
    if not isinstance(name, str) or not name:
        return ToolCallError(f'the tool call has no "name" (a non-empty string), got {name!r:.60}', body)
    arguments = obj.get("arguments", {})
    if not isinstance(arguments, dict):
        return ToolCallError(f'"arguments" of {name} must be a JSON object, got {_json_type(arguments)}', body)
    return ToolCall(name, arguments)


def parse_tool_calls(text: str) -> list[ToolCall | ToolCallError]:
    """Every <tool_call>...</tool_call> block in ``text``, in order. Text outside the blocks is
    ignored; an opening tag never closed is a ToolCallError (a call cut off, or a rollout loop that
    dropped the stop string from the turn)."""
    calls, pos = [], 0
    while (start := text.find(TOOL_CALL_OPEN, pos)) != -1:
        body_start = start + len(TOOL_CALL_OPEN)
        end = text.find(TOOL_CALL_CLOSE, body_start)
        if end == -1:
            calls.append(ToolCallError(f"{TOOL_CALL_OPEN} without {TOOL_CALL_CLOSE}", text[body_start:]))
            break
        calls.append(_parse_call(text[body_start:end].strip()))
        pos = end + len(TOOL_CALL_CLOSE)
    return calls


def tools_system_prompt(tools: list) -> str:
    """Hermes-style instructions listing the tools' schemas (functions or schema dicts), one JSON per line."""
    schemas = "\n".join(json.dumps(t if isinstance(t, dict) else tool_schema(t)) for t in tools)
    return ("# Tools\n\nYou may call one or more functions to assist with the user query.\n\n"
            "You are provided with function signatures within <tools></tools> XML tags:\n"
            f"<tools>\n{schemas}\n</tools>\n\n"
            "For each function call, return a json object with function name and arguments within "
            f"{TOOL_CALL_OPEN}{TOOL_CALL_CLOSE} XML tags:\n"
            f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}\n\n'
            "When you have the final answer, reply with it and no tool call.")


# ------------------------------------------------------------------ argument checks


def _matches(value, hint) -> bool:
    """Whether a JSON value fits a type hint. int/float/str/bool (bool is not a number), lists, dicts,
    Optional and Literal are checked; any other hint is the tool's own business."""
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return any(_matches(value, arg) for arg in typing.get_args(hint))
    if origin is typing.Literal:
        return any(type(value) is type(arg) and value == arg for arg in typing.get_args(hint))
    if hint is None or hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is str:
        return isinstance(value, str)
    if (origin or hint) in (list, dict):
        return isinstance(value, origin or hint)
    return True


def _describe(hint) -> str:
    return _JSON_TYPES.get(hint, str(hint).replace("typing.", ""))


class _Tool:
    """A function with what checking its arguments needs (parameters, type hints, required names)."""

    def __init__(self, fn):
        self.fn = fn
        self.schema = tool_schema(fn)
        self.name = self.schema["function"]["name"]
        signature = inspect.signature(fn)
        hints = typing.get_type_hints(fn)
        kinds = (inspect.Parameter.POSITIONAL_OR_KEYWORD, inspect.Parameter.KEYWORD_ONLY)
        self.params = {n: hints.get(n) for n, p in signature.parameters.items() if p.kind in kinds}
        self.required = [n for n, p in signature.parameters.items()
                         if p.kind in kinds and p.default is inspect.Parameter.empty]
        self.extra_ok = any(p.kind is inspect.Parameter.VAR_KEYWORD for p in signature.parameters.values())

    def argument_error(self, arguments: dict) -> str | None:
        takes = ", ".join(self.params) or "no arguments"
        for key in arguments:
            if key not in self.params and not self.extra_ok:
                return f"{self.name} got an unexpected argument {key!r} (it takes: {takes})"
        missing = [n for n in self.required if n not in arguments]
        if missing:
            return f"{self.name} is missing argument{'s' if len(missing) > 1 else ''} {', '.join(map(repr, missing))}"
        for key, value in arguments.items():
            hint = self.params.get(key)
            if hint is not None and not _matches(value, hint):
                return (f"argument {key!r} of {self.name} must be {_describe(hint)}, "
                        f"got {_json_type(value)} {json.dumps(value)[:60]}")
        return None

    def run(self, arguments: dict) -> tuple[str, bool]:
        """(observation text, whether it is an error)."""
        problem = self.argument_error(arguments)
        if problem is not None:
            return ERROR_PREFIX + problem, True
        arguments = {k: float(v) if self.params.get(k) is float else v for k, v in arguments.items()}
        try:
            return str(self.fn(**arguments)), False
        except Exception as e:  # the tool's failure is the policy's observation, not the actor's crash
            return f"{ERROR_PREFIX}{type(e).__name__}: {e}", True


class ToolEnvironment(Environment):
    """Runs the tool calls of each policy turn; a turn without a call ends the episode."""

    stop = (TOOL_CALL_CLOSE,)

    def __init__(self, tools: list):
        if not tools:
            raise ValueError("ToolEnvironment needs at least one tool")
        self.tools: dict[str, _Tool] = {}
        for fn in tools:
            if not callable(fn):
                raise ValueError(f"tool {fn!r:.60} is a {type(fn).__name__}, not a function")
            tool = _Tool(fn)
            if tool.name in self.tools:
                raise ValueError(f"two tools are named {tool.name!r}")
            self.tools[tool.name] = tool
        self._system_prompt = tools_system_prompt([t.schema for t in self.tools.values()])

    def system_prompt(self) -> str:
        return self._system_prompt

    def _answer(self, call: ToolCall | ToolCallError) -> tuple[str, bool]:
        if isinstance(call, ToolCallError):
            return ERROR_PREFIX + call.message, True
        tool = self.tools.get(call.name)
        if tool is None:
            return f"{ERROR_PREFIX}unknown tool {call.name!r:.60} (tools: {', '.join(self.tools)})", True
        return tool.run(call.arguments)

    def step(self, action: str) -> Observation:
        calls = parse_tool_calls(action)
        if not calls:
            return Observation(done=True, info={"tool_calls": 0, "tool_errors": 0})
        answers = [self._answer(call) for call in calls]
        return Observation(messages=[{"role": OBSERVATION_ROLE, "content": text} for text, _ in answers],
                           info={"tool_calls": len(calls), "tool_errors": sum(bad for _, bad in answers)})


def make_tool_environment(paths: list[str]) -> ToolEnvironment:
    """The ToolEnvironment of the config's ``env.tools``: 'module:function' import paths."""
    if isinstance(paths, str) or not paths:
        raise ValueError(f"env.tools must be a non-empty list of 'module:function' paths, got {paths!r}")
    tools = []
    for path in paths:
        fn = import_object(path, "env.tools")
        if not callable(fn):
            raise ValueError(f"env.tools: {path!r} is a {type(fn).__name__}, not a function")
        tools.append(fn)
    try:
        return ToolEnvironment(tools)
    except ValueError as e:
        raise ValueError(f"env.tools: {e}") from None
