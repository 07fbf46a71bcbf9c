import pytest

from rlhf_ray.tasks.arithmetic import make_arithmetic_split
from rlhf_ray.tasks.rewards import arithmetic_exact_match, extract_final_number, gsm8k_exact_match

pytestmark = pytest.mark.unit


def test_split_disjoint_deterministic_and_correct():
    train, ev = make_arithmetic_split(300, 50, seed=7, max_operand=30)
    assert (train, ev) == make_arithmetic_split(300, 50, seed=7, max_operand=30)
    assert make_arithmetic_split(300, 50, seed=8, max_operand=30) != (train, ev)
    train_q = {d["prompt"] for d in train}
    eval_q = {d["prompt"] for d in ev}
    assert len(train_q) == 300 and len(eval_q) == 50 and not train_q & eval_q
    for d in train + ev:
        a, op, b = d["prompt"].removeprefix("What is ").removesuffix("?").split(" ")
        assert op in "+-" and int(d["answer"]) == (int(a) + int(b) if op == "+" else int(a) - int(b))
        assert int(d["answer"]) >= 0  # allow_negative defaults to False
        assert 0 <= int(a) <= 30 and 0 <= int(b) <= 30


def test_eval_set_does_not_depend_on_train_size():
    assert make_arithmetic_split(10, 20, seed=1)[1] == make_arithmetic_split(500, 20, seed=1)[1]


def test_split_can_exhaust_pool_and_rejects_too_many():
    # operands 0..5: 36 sums + 21 non-negative differences
    train, ev = make_arithmetic_split(50, 7, seed=0, max_operand=5)
    assert len({d["prompt"] for d in train + ev}) == 57
    with pytest.raises(ValueError, match="distinct questions"):
        make_arithmetic_split(50, 8, seed=0, max_operand=5)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("59 + 63 = 122", "122"),
        ("The answer is 7.", "7"),
        ("-5", "-5"),
        ("59 - 63 = -4", "-4"),
        ("63-59=4", "4"),
        ("That makes 1,234 apples", "1234"),
        ("122.0", "122"),
        ("It is 2.50!", "2.5"),
        ("Natalia sold 48/2 = 24 clips.\n#### 18", "18"),
        ("#### 1,000 and later 5", "1000"),
        ("no number here", None),
        ("", None),
    ],
)
def test_extract_final_number(text, expected):
    assert extract_final_number(text) == expected


def test_arithmetic_exact_match():
    responses = ["59 + 63 = 122", "The answer is 122.0", "I don't know", "121", "1,22"]
    assert arithmetic_exact_match(["q"] * 5, responses, ["122"] * 5) == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert arithmetic_exact_match(["q"], ["-5"], ["-5"]) == [1.0]
    assert arithmetic_exact_match(["q"], ["1,234"], ["1234"]) == [1.0]
    with pytest.raises(ValueError):
        arithmetic_exact_match(["q"], ["1", "2"], ["1"])


def test_gsm8k_exact_match():
    reference = "She sold 48/2 = 24 clips in May.\n#### 18"
    responses = ["So the total is 18.", "#### 18", "24", "The answer: 18.0"]
    assert gsm8k_exact_match(["q"] * 4, responses, [reference] * 4) == [1.0, 1.0, 0.0, 1.0]
