"""A calculator tool and the environment that serves it.

The expression comes from the policy, so nothing is evaluated by Python: a small tokenizer and a
recursive-descent parser compute it over exact fractions (0.1 + 0.2 is 0.3, 6 / 3 is 2). Sizes
are bounded (input length, exponents, digits of every intermediate result) so that a sampled
"9**9**9" costs microseconds, not the actor. Errors are ValueErrors whose message says what and
where (positions count characters from 0); ToolEnvironment hands them back to the policy.

Grammar (Python's precedence; ** is right-associative and binds tighter than a unary minus on
its left, so -2**2 is -4 and 2**-1 is 0.5):

    expr  := term (('+' | '-') term)*
    term  := unary (('*' | '/' | '//' | '%') unary)*
    unary := ('-' | '+') unary | power
    power := atom ('**' unary)?
    atom  := NUMBER | '(' expr ')'
"""

from __future__ import annotations

import math
import re
from decimal import Context, Decimal
from fractions import Fraction

from rlhf_ray.envs.tools import ToolEnvironment

MAX_LENGTH = 200  # characters of input
MAX_EXPONENT = 100  # |exponent| of **
MAX_DIGITS = 1000  # decimal digits of any numerator or denominator along the way
DECIMALS = 10  # a non-integer result prints with up to this many decimals (significant digits below 1)

_MAX_BITS = math.ceil(MAX_DIGITS * math.log2(10))
# Thousands groups only when they are proper ("1,234", not "1,23"), so "f(1,2)"-like text fails loudly.
_NUMBER = re.compile(r"(?:\d{1,3}(?:,\d{3})+(?![\d,])|\d+)(?:\.\d*)?|\.\d+")
_OPERATORS = ("**", "//", "+", "-", "*", "/", "%", "(", ")")
_ALIASES = {"×": "*", "÷": "/", "−": "-"}  # multiplication sign, division sign, minus sign


def _tokenize(text: str) -> list[tuple[str, object, int]]:
    """(kind, value, position) triples: kind is "num" (value a Fraction) or "op" (value the operator)."""
    tokens, i = [], 0
    while i < len(text):
        c = text[i]
        if c.isspace():
            i += 1
            continue
        match = _NUMBER.match(text, i)
        if match:
            tokens.append(("num", Fraction(match.group().replace(",", "")), i))
            i = match.end()
            continue
        if c in _ALIASES:
            tokens.append(("op", _ALIASES[c], i))
            i += 1
            continue
        op = next((op for op in _OPERATORS if text.startswith(op, i)), None)
        if op is None:
            raise ValueError(f"unexpected character {c!r} at position {i}")
        tokens.append(("op", op, i))
        i += len(op)
    return tokens


def _checked(value: Fraction) -> Fraction:
    if max(value.numerator.bit_length(), value.denominator.bit_length()) > _MAX_BITS:
        raise ValueError(f"result too large (more than {MAX_DIGITS} digits)")
    return value


def _power(base: Fraction, exponent: Fraction, position: int) -> Fraction:
    if abs(exponent) > MAX_EXPONENT:
        raise ValueError(f"exponent {_format(exponent)} at position {position} is too large "
                         f"(at most {MAX_EXPONENT} in absolute value)")
    if base == 0 and exponent < 0:
        raise ValueError(f"division by zero (0 to a negative power at position {position})")
    if exponent.denominator == 1:
        bits = max(base.numerator.bit_length(), base.denominator.bit_length()) * abs(exponent.numerator)
        if bits > _MAX_BITS + 64:  # cheap upper bound before computing; _checked has the last word
            raise ValueError(f"result too large (more than {MAX_DIGITS} digits)")
        return _checked(base ** exponent.numerator)
    if base < 0:
        raise ValueError(f"a negative number to a fractional power (at position {position}) is not a real number")
    try:
        return _checked(Fraction(math.pow(base, exponent)))  # irrational in general: a float is all we can give
    except OverflowError:
        raise ValueError(f"result too large (more than {MAX_DIGITS} digits)") from None


class _Parser:
    def __init__(self, text: str):
        self.tokens = _tokenize(text)
        self.end = len(text)
        self.i = 0

    def peek(self) -> tuple[str, object, int] | None:
        return self.tokens[self.i] if self.i < len(self.tokens) else None

    def take_op(self, *ops: str) -> tuple[str, int] | None:
        token = self.peek()
        if token is not None and token[0] == "op" and token[1] in ops:
            self.i += 1
            return token[1], token[2]
        return None

    def unexpected(self) -> ValueError:
        token = self.peek()
        if token is None:
            return ValueError("unexpected end of expression")
        shown = token[1] if token[0] == "op" else _format(token[1])
        return ValueError(f"unexpected {shown!r} at position {token[2]}")

    def parse(self) -> Fraction:
        if not self.tokens:
            raise ValueError("empty expression")
        value = self.expr()
        if self.peek() is not None:
            raise self.unexpected()
        return value

    def expr(self) -> Fraction:
        value = self.term()
        while (op := self.take_op("+", "-")) is not None:
            right = self.term()
            value = _checked(value + right if op[0] == "+" else value - right)
        return value

    def term(self) -> Fraction:
        value = self.unary()
        while (op := self.take_op("*", "/", "//", "%")) is not None:
            right = self.unary()
            if op[0] != "*" and right == 0:
                raise ValueError(f"division by zero (the {op[0]!r} at position {op[1]})")
            if op[0] == "*":
                value = value * right
            elif op[0] == "/":
                value = value / right
            elif op[0] == "//":
                value = Fraction(value // right)
            else:
                value = value % right
            value = _checked(value)
        return value

    def unary(self) -> Fraction:
        if (op := self.take_op("-", "+")) is not None:
            value = self.unary()
            return -value if op[0] == "-" else value
        return self.power()

    def power(self) -> Fraction:
        base = self.atom()
        if (op := self.take_op("**")) is not None:
            return _power(base, self.unary(), op[1])
        return base

    def atom(self) -> Fraction:
        token = self.peek()
        if token is not None and token[0] == "num":
            self.i += 1
            return _checked(token[1])
        if self.take_op("(") is not None:
            value = self.expr()
            if self.take_op(")") is None:
                raise self.unexpected()
            return value
        raise self.unexpected()


def _format(value: Fraction) -> str:
    """Integers exactly; other values rounded to DECIMALS decimals (DECIMALS significant digits below 1)."""
    if value.denominator == 1:
        return str(value.numerator)
    int_digits = len(str(abs(value.numerator) // value.denominator).lstrip("0"))
    context = Context(prec=int_digits + DECIMALS)
    rounded = context.divide(Decimal(value.numerator), Decimal(value.denominator))
    return format(rounded.normalize(context), "f")


def calculator(expression: str) -> str:
    """Evaluate an arithmetic expression exactly and return the result.

    Supports + - * / // % ** and parentheses on integers and decimals (1,234 is read as 1234).

    Args:
        expression: The arithmetic expression to evaluate, e.g. "123 * 456" or "(1.5 + 2) ** 2".
    """
    if not isinstance(expression, str):
        raise ValueError(f"expression must be a string, got {type(expression).__name__}")
    if len(expression) > MAX_LENGTH:
        raise ValueError(f"expression too long ({len(expression)} characters; at most {MAX_LENGTH})")
    return _format(_Parser(expression).parse())


class CalculatorEnvironment(ToolEnvironment):
    """A ToolEnvironment with the calculator as its only tool (name it as env.environment)."""

    def __init__(self):
        super().__init__([calculator])
