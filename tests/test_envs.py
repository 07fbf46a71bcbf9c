"""Environments for multi-turn RL: the calculator, tool calls, the guessing game, the turn format
(observation ids appended token-exactly) and the SFT traces. Pure Python and a tokenizer; no Ray."""

from __future__ import annotations

import ast
import inspect
import json
import math
import os
import random
import re
import time
from fractions import Fraction

import pytest

from rlhf_ray.data.files import Table
from rlhf_ray.data.formats import detect_format, text_examples
from rlhf_ray.envs import (CalculatorEnvironment, EnvProtocolError, Environment, GuessNumberEnvironment,
                           Observation, ToolEnvironment, TurnFormat, calculator, check_observation,
                           format_tool_call, make_tool_environment, parse_tool_calls, tool_schema)
from rlhf_ray.data.traces import FINAL_ANSWER, calculator_sft_rows
from rlhf_ray.envs import calculator as calculator_module
from rlhf_ray.envs.guess import guess_rows
from rlhf_ray.envs.tools import TOOL_CALL_CLOSE, TOOL_CALL_OPEN, ToolCall, ToolCallError, tools_system_prompt
from rlhf_ray.models.tiny import CHATML_TEMPLATE, build_tokenizer

pytestmark = pytest.mark.unit

SMOLLM2 = "/root/.cache/rlhf_ray/models/SmolLM2-135M-Instruct"
# SmolLM2-Instruct's template (ChatML with a default system prompt), so the test runs without the cache.
SMOLLM2_TEMPLATE = (
    "{% for message in messages %}{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
# Qwen2.5-style: consecutive tool messages grouped into one user turn of <tool_response> blocks.
QWEN_LIKE_TEMPLATE = (
    "{%- for message in messages %}{%- if message.role == 'tool' %}"
    "{%- if loop.first or messages[loop.index0 - 1].role != 'tool' %}{{- '<|im_start|>user' }}{%- endif %}"
    "{{- '\n<tool_response>\n' + message.content + '\n</tool_response>' }}"
    "{%- if loop.last or messages[loop.index0 + 1].role != 'tool' %}{{- '<|im_end|>\n' }}{%- endif %}"
    "{%- else %}{{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>\n' }}{%- endif %}"
    "{%- endfor %}{%- if add_generation_prompt %}{{- '<|im_start|>assistant\n' }}{%- endif %}"
)
TOOL_56088 = [{"role": "tool", "content": "56088"}]


# ------------------------------------------------------------------ calculator


def _random_tree(rng: random.Random, depth: int) -> tuple[str, Fraction]:
    """A fully parenthesised expression and its value computed with Python operators on the operands."""
    if depth == 0 or rng.random() < 0.3:
        n = rng.randint(-999, 999)
        return (f"({n})" if n < 0 else str(n)), Fraction(n)
    (left, a), (right, b) = _random_tree(rng, depth - 1), _random_tree(rng, depth - 1)
    op = rng.choice(["+", "-", "*", "/", "//", "%"])
    if op in ("/", "//", "%") and b == 0:
        op = "+"
    value = {"+": lambda: a + b, "-": lambda: a - b, "*": lambda: a * b, "/": lambda: a / b,
             "//": lambda: Fraction(a // b), "%": lambda: a % b}[op]()
    return f"({left} {op} {right})", value


def test_calculator_matches_python_on_random_trees():
    rng = random.Random(0)
    checked = 0
    for _ in range(600):
        text, value = _random_tree(rng, 4)
        if len(text) > 200:
            continue
        got = calculator(text)
        if value.denominator == 1:
            assert got == str(value.numerator), text
        else:
            assert math.isclose(float(got), float(value), rel_tol=1e-9, abs_tol=1e-10), (text, got, value)
        checked += 1
    assert checked > 300


FLAT = [  # (template, the same computation written with Python's operators)
    ("{a} + {b} * {c}", lambda a, b, c: a + b * c),
    ("{a} * {b} + {c}", lambda a, b, c: a * b + c),
    ("{a} - {b} - {c}", lambda a, b, c: a - b - c),
    ("{a} - {b} * {c} // {d}", lambda a, b, c, d: a - b * c // d),
    ("{a} % {b} * {c}", lambda a, b, c: a % b * c),
    ("-{a} ** 2 + {b}", lambda a, b: -a ** 2 + b),
    ("{a} * -{b} + {c} % {d}", lambda a, b, c, d: a * -b + c % d),
    ("({a} + {b}) * ({c} - {d})", lambda a, b, c, d: (a + b) * (c - d)),
    ("{a} // {b} // {c}", lambda a, b, c: a // b // c),
    ("2 ** {a} ** 0", lambda a: 2 ** a ** 0),
    ("{a} ** 2 ** 2 - {b}", lambda a, b: a ** 2 ** 2 - b),
]


@pytest.mark.parametrize("template,reference", FLAT, ids=[t for t, _ in FLAT])
def test_calculator_precedence_matches_python(template, reference):
    rng = random.Random(template)
    for _ in range(50):
        args = [rng.randint(1, 60) for _ in range(len(inspect.signature(reference).parameters))]
        names = dict(zip("abcd", args))
        assert calculator(template.format(**names)) == str(reference(*args)), template.format(**names)


@pytest.mark.parametrize("expression,expected", [
    ("123 * 456", "56088"), ("2 ** 3 ** 2", "512"), ("(2 ** 3) ** 2", "64"), ("-2 ** 2", "-4"),
    ("2 ** -1", "0.5"), ("2 ** -2 ** 2", "0.0625"), ("6 / 3", "2"), ("7 / 2", "3.5"), ("1 / 3", "0.3333333333"),
    ("10 / 3", "3.3333333333"), ("2 / 3", "0.6666666667"), ("0.1 + 0.2", "0.3"), ("1.5 * 4", "6"),
    ("-7 // 2", "-4"), ("-7 % 3", "2"), ("7 % -3", "-2"), ("7.5 // 2", "3"), ("--3", "3"), ("+-3", "-3"),
    ("1,234 + 1", "1235"), ("1,234,567.5 * 2", "2469135"), ("6 ÷ 4", "1.5"), ("3 × 4", "12"), ("5 − 7", "-2"),
    ("  ( 1+2 )*3  ", "9"), (".5 + 1.", "1.5"), ("0 ** 0", "1"), ("4 ** 0.5", "2"), ("2 ** 0.5", "1.4142135624"),
    ("1 / 3000000000", "0.0000000003333333333"), ("12345678901234.5", "12345678901234.5"),
    ("99999999999999999999 * 99999999999999999999", str(99999999999999999999 ** 2)), ("2 ** 100", str(2 ** 100)),
    ("(" * 99 + "1" + ")" * 99, "1"), ("-" * 199 + "1", "-1"),
])
def test_calculator_values(expression, expected):
    assert calculator(expression) == expected


@pytest.mark.parametrize("expression,message", [
    ("(1 + 2))", "unexpected ')' at position 7"),
    ("1 +", "unexpected end of expression"),
    ("", "empty expression"), ("   ", "empty expression"),
    ("1 + * 2", "unexpected '*' at position 4"),
    ("(1 + 2", "unexpected end of expression"),
    ("2 3", "unexpected '3' at position 2"),
    ("2 ^ 3", "unexpected character '^' at position 2"),
    ("1e5", "unexpected character 'e' at position 1"),
    ("1,23", "unexpected character ',' at position 1"),
    ("__import__('os')", "unexpected character '_' at position 0"),
    ("1 / 0", "division by zero"), ("1 // (2 - 2)", "division by zero"), ("5 % 0", "division by zero"),
    ("0 ** -1", "division by zero"),
    ("2 ** 101", "exponent 101 at position 2 is too large"),
    ("9 ** 9 ** 9", "too large"),
    ("(10 ** 100) ** 11", "result too large"),
    ("(-8) ** 0.5", "not a real number"),
    ("1" + " + 1" * 60, "expression too long (241 characters; at most 200)"),
])
def test_calculator_errors(expression, message):
    with pytest.raises(ValueError) as e:
        calculator(expression)
    assert message in str(e.value), str(e.value)


def test_calculator_bounds_are_fast():
    """Sampled exponent towers and digit bombs are refused before any big arithmetic."""
    start = time.perf_counter()
    for expression in ["9**9**9**9", "(9**100)**100", "99**99*99**99*99**99*99**99*99**99*99**99*99**99",
                       "((2**100)**100)**100", "10**100 / 3 ** 100"]:
        try:
            calculator(expression)
        except ValueError as e:
            assert "too large" in str(e)
    assert time.perf_counter() - start < 0.5


def test_calculator_evaluates_nothing():
    source = inspect.getsource(calculator_module)
    for needle in ("eval(", "exec(", "literal_eval", "__import__", "getattr("):
        assert needle not in source, needle
    assert not re.search(r"(?<![\w.])compile\(", source)  # re.compile is fine; the builtin is not
    calls = {node.func.id for node in ast.walk(ast.parse(source))
             if isinstance(node, ast.Call) and isinstance(node.func, ast.Name)}
    assert not calls & {"eval", "exec", "compile", "__import__"}


def test_calculator_schema():
    schema = tool_schema(calculator)
    assert schema["type"] == "function"
    function = schema["function"]
    assert function["name"] == "calculator"
    assert function["description"].startswith("Evaluate an arithmetic expression")
    assert function["parameters"]["properties"]["expression"]["type"] == "string"
    assert function["parameters"]["properties"]["expression"]["description"]
    assert function["parameters"]["required"] == ["expression"]


def test_tool_schema_errors_name_the_function():
    def no_docs(x: int) -> int:
        return x

    def no_hints(x):
        """Nothing.

        Args:
            x: something
        """

    for fn in (no_docs, no_hints):
        with pytest.raises(ValueError, match=fn.__name__):
            tool_schema(fn)


# ------------------------------------------------------------------ tool calls


def test_format_and_parse_round_trip():
    text = format_tool_call("calculator", {"expression": "123 * 456"})
    assert text == '<tool_call>\n{"name": "calculator", "arguments": {"expression": "123 * 456"}}\n</tool_call>'
    assert parse_tool_calls("Let me compute. " + text) == [ToolCall("calculator", {"expression": "123 * 456"})]


def test_parse_tool_calls_edge_cases():
    assert parse_tool_calls("The answer is 4.") == []
    assert parse_tool_calls("") == []
    tight = '<tool_call>{"name":"f","arguments":{"x":1}}</tool_call>'
    spaced = '<tool_call>  \n\t {"name": "f", "arguments": {"x": 1}} \n\n</tool_call>'
    assert parse_tool_calls(tight) == parse_tool_calls(spaced) == [ToolCall("f", {"x": 1})]
    two = parse_tool_calls(tight + " and " + format_tool_call("g", {}) + " trailing </tool_call> text")
    assert two == [ToolCall("f", {"x": 1}), ToolCall("g", {})]
    assert parse_tool_calls('<tool_call>{"name": "h"}</tool_call>') == [ToolCall("h", {})]

    def error(text: str) -> str:
        (call,) = parse_tool_calls(text)
        assert isinstance(call, ToolCallError)
        return call.message

    assert "not valid JSON" in error("<tool_call>{'name': 'f'}</tool_call>")
    assert "not valid JSON" in error("<tool_call></tool_call>")
    assert "JSON object" in error("<tool_call>[1, 2]</tool_call>")
    assert '"name"' in error('<tool_call>{"arguments": {}}</tool_call>')
    assert '"name"' in error('<tool_call>{"name": 3, "arguments": {}}</tool_call>')
    assert "must be a JSON object, got string" in error('<tool_call>{"name": "f", "arguments": "{}"}</tool_call>')
    assert "must be a JSON object, got array" in error('<tool_call>{"name": "f", "arguments": [1]}</tool_call>')
    assert f"without {TOOL_CALL_CLOSE}" in error('<tool_call>{"name": "f", "arguments": {}}')
    # a good call, then a broken one: both reported, in order
    calls = parse_tool_calls(tight + "<tool_call>{oops</tool_call>")
    assert calls[0] == ToolCall("f", {"x": 1}) and isinstance(calls[1], ToolCallError)


def test_tools_system_prompt_lists_schemas_and_the_format():
    text = tools_system_prompt([calculator])
    assert text == tools_system_prompt([calculator])
    inside = text.split("<tools>\n")[1].split("\n</tools>")[0]
    assert [json.loads(line) for line in inside.splitlines()] == [tool_schema(calculator)]
    assert f'{TOOL_CALL_OPEN}\n{{"name": <function-name>, "arguments": <args-json-object>}}\n{TOOL_CALL_CLOSE}' in text
    assert CalculatorEnvironment().system_prompt() == text


def add(a: int, b: int) -> int:
    """Add two integers.

    Args:
        a: The first.
        b: The second.
    """
    return a + b


def scale(x: float, factor: float = 2.0, loud: bool = False, unit: str | None = None) -> str:
    """Scale a number.

    Args:
        x: The number.
        factor: The factor.
        loud: Shout the result.
        unit: An optional unit.
    """
    out = f"{x * factor!r}{unit or ''}"
    return out.upper() if loud else out


def broken(n: int) -> int:
    """Always fails.

    Args:
        n: Anything.
    """
    raise RuntimeError(f"boom {n}")


def _one(env: ToolEnvironment, arguments, name: str = "add") -> Observation:
    obs = check_observation(env.step(format_tool_call(name, arguments)), type(env).__name__)
    assert not obs.done and obs.reward == 0 and obs.text is None
    assert obs.info["tool_calls"] == 1 and len(obs.messages) == 1 and obs.messages[0]["role"] == "tool"
    return obs


def test_tool_environment_runs_calls_and_reports_errors():
    env = ToolEnvironment([add, scale, broken])
    assert env.stop == (TOOL_CALL_CLOSE,)
    assert env.reset({"prompt": "p", "answer": "a"}) is None

    def answer(arguments, name="add") -> tuple[str, int]:
        obs = _one(env, arguments, name)
        return obs.messages[0]["content"], obs.info["tool_errors"]

    assert answer({"a": 2, "b": 3}) == ("5", 0)
    assert answer({"x": 3}, "scale") == ("6.0", 0)  # an int for a float parameter is fine (passed as float)
    assert answer({"x": 1.5, "factor": 3, "loud": True, "unit": "m"}, "scale") == ("4.5M", 0)
    assert answer({"x": 1, "unit": None}, "scale") == ("2.0", 0)
    assert answer({"a": 2}) == ("error: add is missing argument 'b'", 1)
    assert answer({}) == ("error: add is missing arguments 'a', 'b'", 1)
    assert answer({"a": 1, "b": 2, "c": 3}) == ("error: add got an unexpected argument 'c' (it takes: a, b)", 1)
    assert answer({"a": "2", "b": 3}) == ("error: argument 'a' of add must be integer, got string \"2\"", 1)
    assert answer({"a": True, "b": 3}) == ("error: argument 'a' of add must be integer, got boolean true", 1)
    assert answer({"a": 1.5, "b": 3}) == ("error: argument 'a' of add must be integer, got number 1.5", 1)
    assert answer({"x": False}, "scale")[0] == "error: argument 'x' of scale must be number, got boolean false"
    assert answer({"x": 1, "loud": 1}, "scale")[0] == "error: argument 'loud' of scale must be boolean, got integer 1"
    assert answer({"x": 1, "unit": 5}, "scale")[0].startswith("error: argument 'unit' of scale must be str | None")
    assert answer({"n": 7}, "broken") == ("error: RuntimeError: boom 7", 1)
    assert answer({"a": 1}, "nope") == ("error: unknown tool 'nope' (tools: add, scale, broken)", 1)


def test_tool_environment_many_calls_garbage_and_final_answer():
    env = CalculatorEnvironment()
    env.reset({"prompt": "What is 123 * 456?", "answer": "56088"})
    turn = (format_tool_call("calculator", {"expression": "123 * 456"}) + "\n"
            + format_tool_call("calculator", {"expression": "1 / 0"}) + "<tool_call>not json</tool_call>"
            + format_tool_call("calculator", {"expression": "(1 + 2))"}))
    obs = check_observation(env.step(turn), "CalculatorEnvironment")
    assert [m["content"] for m in obs.messages] == [
        "56088", "error: ValueError: division by zero (the '/' at position 2)",
        "error: the tool call is not valid JSON (Expecting value at character 0)",
        "error: ValueError: unexpected ')' at position 7"]
    assert obs.info == {"tool_calls": 4, "tool_errors": 3} and not obs.done
    final = check_observation(env.step("The answer is 56088."), "CalculatorEnvironment")
    assert final.done and final.messages == [] and final.text is None and final.info["tool_calls"] == 0
    for garbage in ["\x00\x01", "<tool_call>", "</tool_call><tool_call>", "<tool_call>{}</tool_call>" * 3,
                    '<tool_call>{"name": "calculator", "arguments": {"expression": "' + "9" * 5000 + '"}}</tool_call>',
                    '<tool_call>{"name": "calculator", "arguments": {"expression": null}}</tool_call>']:
        obs = check_observation(env.step(garbage), "CalculatorEnvironment")
        assert all(m["content"].startswith("error: ") for m in obs.messages), obs


def test_tool_environment_construction_errors():
    with pytest.raises(ValueError, match="at least one tool"):
        ToolEnvironment([])
    with pytest.raises(ValueError, match="two tools are named 'add'"):
        ToolEnvironment([add, add])
    with pytest.raises(ValueError, match="not a function"):
        ToolEnvironment([3])


def test_make_tool_environment_from_paths():
    env = make_tool_environment(["rlhf_ray.envs.calculator:calculator"])
    assert list(env.tools) == ["calculator"]
    assert env.step(format_tool_call("calculator", {"expression": "2*3"})).messages[0]["content"] == "6"
    for paths, message in [(["rlhf_ray.envs.calculator:nope"], "has no 'nope'"),
                           (["no_such_module_xyz:f"], "cannot import module"),
                           (["rlhf_ray.envs.calculator"], "must look like"),
                           (["rlhf_ray.envs.calculator:MAX_LENGTH"], "is a int, not a function"),
                           ([], "non-empty list"), ("rlhf_ray.envs.calculator:calculator", "non-empty list"),
                           (["rlhf_ray.envs.calculator:_format"], "env.tools: tool '_format'")]:
        with pytest.raises(ValueError) as e:
            make_tool_environment(paths)
        assert "env.tools" in str(e.value) and message in str(e.value), str(e.value)


# ------------------------------------------------------------------ guess the number


def test_guess_game_transcript():
    env = GuessNumberEnvironment()
    assert env.stop == ()
    assert env.reset({"prompt": "...", "answer": "37"}) is None
    transcript = []
    for turn in ["I guess 50", "Hmm, maybe", "25.", "Between 25 and 50 I pick 37"]:
        obs = check_observation(env.step(turn), "GuessNumberEnvironment")
        transcript.append((obs.text, obs.reward, obs.done, obs.info))
    assert transcript == [("Lower.", 0.0, False, {"guesses": 1}),
                          ("Please answer with a number.", 0.0, False, {"invalid": 1}),
                          ("Higher.", 0.0, False, {"guesses": 1}),
                          ("Correct!", 1.0, True, {"guesses": 1})]


def test_guess_game_runs_out_and_reads_the_last_integer():
    env = GuessNumberEnvironment(high=10, max_guesses=3)
    env.reset({"prompt": "...", "answer": 4})
    assert env.step("between 1 and 10: 9").text == "Lower."
    assert env.step("-3").text == "Higher."
    assert env.step("no number").done is False
    last = env.step("1" + "0" * 6000)  # absurd guesses are just too high
    assert last.done and last.reward == 0.0 and last.text.startswith("Lower.") and "4" in last.text
    with pytest.raises(ValueError, match=r"not in \[1, 10\]"):
        env.reset({"answer": "11"})
    with pytest.raises(ValueError, match="'answer' must be an integer"):
        env.reset({"answer": "seven"})


def test_guess_rows_are_deterministic_and_in_range():
    rows = guess_rows(200, seed=3)
    assert rows == guess_rows(200, seed=3) and rows != guess_rows(200, seed=4)
    assert rows[0]["prompt"] == ("I am thinking of a number between 1 and 100. Guess it: answer with a single "
                                 "number; I will say Higher or Lower.")
    secrets = [int(r["answer"]) for r in rows]
    assert min(secrets) >= 1 and max(secrets) <= 100 and len(set(secrets)) > 50
    assert all(1 <= int(r["answer"]) <= 5 for r in guess_rows(50, 0, high=5))
    assert "between 1 and 5." in guess_rows(1, 0, high=5)[0]["prompt"]


def test_bisection_always_wins_within_seven_guesses():
    for secret in range(1, 101):
        env = GuessNumberEnvironment()
        env.reset({"answer": str(secret)})
        lo, hi = 1, 100
        for _ in range(7):
            guess = (lo + hi) // 2
            obs = env.step(str(guess))
            if obs.done:
                break
            lo, hi = (guess + 1, hi) if obs.text == "Higher." else (lo, guess - 1)
        assert obs.done and obs.reward == 1.0, secret


# ------------------------------------------------------------------ protocol checks


class _Returns(Environment):
    def __init__(self, value):
        self.value = value

    def step(self, action: str):
        return self.value


@pytest.mark.parametrize("value,message", [
    (3, "returned int"), (None, "returned NoneType"),
    (Observation(reward=float("nan")), "reward must be a finite number"),
    (Observation(reward=float("inf")), "reward must be a finite number"),
    (Observation(reward=True), "reward must be a finite number"),
    (Observation(done=1), "done must be a bool"), (Observation(done="yes"), "done must be a bool"),
    (Observation(text=5), "text must be a string"),
    (Observation(messages=[{"role": "tool"}]), "every message must be"),
    (Observation(messages=["hi"]), "every message must be"),
    (Observation(messages=None), "messages must be a list, got NoneType"),
    (Observation(messages={"role": "tool", "content": "x"}), "messages must be a list, got dict"),
    (Observation(info=None), "info must be a dict, got NoneType"),
    (Observation(info={"calls": 1.5}), "info['calls'] must be an int counter"),
    (Observation(info={"calls": True}), "info['calls'] must be an int counter"),
])
def test_check_observation_refuses_garbage(value, message):
    env = _Returns(value)
    with pytest.raises(EnvProtocolError) as e:
        check_observation(env.step("x"), type(env).__name__)
    assert "_Returns.step" in str(e.value) and message in str(e.value), str(e.value)


def test_check_observation_accepts_strings_and_observations():
    assert check_observation("hi", "E").all_messages() == [{"role": "tool", "content": "hi"}]
    obs = Observation(text="a", reward=1, done=True, messages=[{"role": "user", "content": "b"}], info={"n": 2})
    assert check_observation(obs, "E") is obs
    assert obs.all_messages() == [{"role": "tool", "content": "a"}, {"role": "user", "content": "b"}]


# ------------------------------------------------------------------ turn format


@pytest.fixture(scope="module")
def tiny_tokenizer():
    return build_tokenizer()


@pytest.fixture(scope="module")
def smollm2_like():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = SMOLLM2_TEMPLATE
    return tokenizer


@pytest.fixture(scope="module")
def smollm2():
    if not os.path.isdir(SMOLLM2):
        pytest.skip(f"{SMOLLM2} is not there")
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(SMOLLM2)


def _tokenizers(request) -> list:
    names = ["tiny_tokenizer", "smollm2_like"] + (["smollm2"] if os.path.isdir(SMOLLM2) else [])
    return [request.getfixturevalue(n) for n in names]


def test_chatml_observation_text(request):
    for tokenizer in _tokenizers(request):
        fmt = TurnFormat(tokenizer)
        assert fmt.end_of_turn == "<|im_end|>\n"
        assert fmt.observation_text(TOOL_56088, turn_ended_with_eos=True) == (
            "\n<|im_start|>tool\n56088<|im_end|>\n<|im_start|>assistant\n")
        assert fmt.observation_text(TOOL_56088, turn_ended_with_eos=False) == (
            "<|im_end|>\n<|im_start|>tool\n56088<|im_end|>\n<|im_start|>assistant\n")
        two = fmt.observation_text([{"role": "tool", "content": "a"}, {"role": "user", "content": "b"}], True)
        assert two == "\n<|im_start|>tool\na<|im_end|>\n<|im_start|>user\nb<|im_end|>\n<|im_start|>assistant\n"
        ids = fmt.observation_ids(TOOL_56088, turn_ended_with_eos=True)
        assert ids == tokenizer(fmt.observation_text(TOOL_56088, True), add_special_tokens=False).input_ids
        assert tokenizer.convert_tokens_to_ids("<|im_start|>") in ids


def _ids(tokenizer, text: str) -> list[int]:
    return tokenizer(text, add_special_tokens=False).input_ids


@pytest.mark.parametrize("first_turn_eos", [False, True])
def test_concatenated_ids_decode_to_the_rendered_conversation(request, first_turn_eos):
    """prompt ids + generated ids + observation ids + ... is the conversation the template renders."""
    for tokenizer in _tokenizers(request):
        fmt = TurnFormat(tokenizer)
        eos = [tokenizer.eos_token_id]
        call = format_tool_call("calculator", {"expression": "123 * 456"})
        # a turn cut at the stop string has no eos; one the model ended itself has it
        turn1 = call if not first_turn_eos else "Let me use the calculator."
        observation = TOOL_56088 if not first_turn_eos else [{"role": "user", "content": "Go on."}]
        conversation = [{"role": "user", "content": "What is 123 * 456?"}]
        prompt_ids = _ids(tokenizer, tokenizer.apply_chat_template(conversation, tokenize=False,
                                                                   add_generation_prompt=True))
        ids = (prompt_ids + _ids(tokenizer, turn1) + (eos if first_turn_eos else [])
               + fmt.observation_ids(observation, turn_ended_with_eos=first_turn_eos)
               + _ids(tokenizer, "The answer is 56088.") + eos)
        whole = tokenizer.apply_chat_template(
            [*conversation, {"role": "assistant", "content": turn1}, *observation,
             {"role": "assistant", "content": "The answer is 56088."}], tokenize=False)
        decoded = tokenizer.decode(ids, skip_special_tokens=False, clean_up_tokenization_spaces=False)
        assert decoded + "\n" == whole  # the template's "\n" after the last <|im_end|> is never generated


def test_grouping_template():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = QWEN_LIKE_TEMPLATE
    fmt = TurnFormat(tokenizer)
    text = fmt.observation_text([{"role": "tool", "content": "a"}, {"role": "tool", "content": "b"}], True)
    assert text == ("\n<|im_start|>user\n<tool_response>\na\n</tool_response>\n<tool_response>\nb\n"
                    "</tool_response><|im_end|>\n<|im_start|>assistant\n")


def test_turn_format_refuses_templates_it_cannot_append_to():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    with pytest.raises(ValueError, match="has no chat template; use env.format=tagged"):
        TurnFormat(tokenizer)
    # a template that marks the last assistant turn: appending a tool message changes earlier text
    tokenizer.chat_template = CHATML_TEMPLATE.replace(
        "message['content'] + '<|im_end|>'",
        "message['content'] + ('<|im_end|><|endoftext|>' if loop.last else '<|im_end|>')")
    with pytest.raises(ValueError, match="re-renders earlier turns when a tool message follows; use env.format=tagged"):
        TurnFormat(tokenizer)
    tokenizer.chat_template = ("{% for m in messages %}{% if m['role'] == 'tool' %}"
                               "{{ raise_exception('roles must alternate') }}{% endif %}"
                               "{{ m['content'] }}{% endfor %}")
    with pytest.raises(ValueError, match="cannot render the messages user/assistant/tool.*roles must alternate"):
        TurnFormat(tokenizer)
    with pytest.raises(ValueError, match="env.format must be one of"):
        TurnFormat(build_tokenizer(), kind="chatml")


def test_eos_that_is_not_the_end_of_turn():
    tokenizer = build_tokenizer()
    tokenizer.eos_token = "<|endoftext|>"
    fmt = TurnFormat(tokenizer)
    assert fmt.observation_text(TOOL_56088, False).startswith("<|im_end|>\n<|im_start|>tool")
    with pytest.raises(ValueError, match="ended with the eos token '<\\|endoftext\\|>'"):
        fmt.observation_text(TOOL_56088, True)


def test_tagged_format():
    tokenizer = build_tokenizer()
    tokenizer.chat_template = None
    fmt = TurnFormat(tokenizer, kind="tagged")
    messages = [{"role": "tool", "content": "56088"}, {"role": "tool", "content": "{x}"}]
    expected = "\n<tool_response>\n56088\n</tool_response>\n\n<tool_response>\n{x}\n</tool_response>\n"
    assert fmt.observation_text(messages, True) == fmt.observation_text(messages, False) == expected
    assert fmt.observation_ids(messages, False) == _ids(tokenizer, expected)
    assert TurnFormat(tokenizer, "tagged", "Result: {observation}\n").observation_text(TOOL_56088, False) == (
        "Result: 56088\n")
    with pytest.raises(ValueError, match="env.observation_template must contain '{observation}'"):
        TurnFormat(tokenizer, "tagged", "<r>{obs}</r>")
    with pytest.raises(ValueError, match="env.observation_template"):
        TurnFormat(tokenizer, "tagged", '{"result": {observation}}')


# ------------------------------------------------------------------ SFT traces


def test_calculator_sft_rows(request):
    rows = [{"prompt": "What is 123 * 456?", "answer": "56088"}, {"prompt": "What is 59 - 63?", "answer": "-4"}]
    system = tools_system_prompt([calculator])
    traces = calculator_sft_rows(rows, system)
    assert len(traces) == 4
    call = format_tool_call("calculator", {"expression": "123 * 456"})
    assert traces[0]["messages"] == [{"role": "system", "content": system},
                                     {"role": "user", "content": "What is 123 * 456?"},
                                     {"role": "assistant", "content": call}]
    assert traces[1]["messages"] == [*traces[0]["messages"], {"role": "tool", "content": "56088"},
                                     {"role": "assistant", "content": FINAL_ANSWER.format(answer="56088")}]
    assert traces[3]["messages"][-1]["content"] == "The answer is -4."
    assert parse_tool_calls(traces[2]["messages"][-1]["content"]) == [ToolCall("calculator", {"expression": "59 - 63"})]
    # the tool message is what CalculatorEnvironment answers to that call
    env = CalculatorEnvironment()
    assert env.step(traces[1]["messages"][2]["content"]).messages == [traces[1]["messages"][3]]
    # no system prompt: the user message comes first
    bare = calculator_sft_rows(rows[:1], None)
    assert bare[0]["messages"][0] == {"role": "user", "content": "What is 123 * 456?"}
    # our offline SFT reads them: the prompt is every message but the last, the response the last
    table = Table("traces", traces, list(range(1, len(traces) + 1)))
    assert detect_format(table) == "sft"
    examples = text_examples(table, "sft", "sft")
    assert examples[0].responses == [call] and examples[1].prompt[-1] == {"role": "tool", "content": "56088"}
    for tokenizer in _tokenizers(request):
        for trace, expression in zip(traces, ["123 * 456", "123 * 456", "59 - 63", "59 - 63"]):
            text = tokenizer.apply_chat_template(trace["messages"], tokenize=False)
            tool_call = format_tool_call("calculator", {"expression": expression})
            assert f"<|im_start|>assistant\n{tool_call}<|im_end|>\n" in text
            assert text.endswith(f"<|im_start|>assistant\n{trace['messages'][-1]['content']}<|im_end|>\n")
        rendered = tokenizer.apply_chat_template(traces[1]["messages"], tokenize=False)
        assert f"<|im_start|>assistant\n{call}<|im_end|>\n<|im_start|>tool\n56088<|im_end|>" in rendered


def test_calculator_sft_rows_refuse_inconsistent_rows():
    with pytest.raises(ValueError, match="row 1: the calculator says 2 \\+ 2 = 4, the row's answer is '5'"):
        calculator_sft_rows([{"prompt": "What is 1 + 1?", "answer": "2"}, {"prompt": "What is 2 + 2?", "answer": "5"}],
                            None)
    with pytest.raises(ValueError, match="row 0: prompt must look like 'What is A op B\\?'"):
        calculator_sft_rows([{"prompt": "Compute 2 + 2", "answer": "4"}], None)
    assert calculator_sft_rows([{"prompt": "What is 2 + 2?", "answer": "4"}], None, "Result: {answer}")[1][
        "messages"][-1]["content"] == "Result: 4"
