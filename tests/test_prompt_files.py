"""Prompt sets from files (task.name=gsm8k / jsonl): fields, held-out split, errors that name the line."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest

from rlhf_ray.config import ConfigError

from rlhf_ray.config.loading import load_config
from rlhf_ray.data.prompts import load_task

pytestmark = pytest.mark.unit

GSM8K = Path(__file__).resolve().parents[2] / "shared/data/gsm8k"


@pytest.fixture(scope="module")
def tokenizer():
    from rlhf_ray.models.tiny import build_tokenizer

    return build_tokenizer()


def _write(path: Path, rows) -> str:
    lines = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if path.suffix == ".gz":
        with gzip.open(path, "wt") as f:
            f.write(lines)
    else:
        path.write_text(lines)
    return str(path)


def _cfg(*overrides):
    return load_config(overrides=["model.max_prompt_tokens=200", *overrides])


def _gsm(i):
    return {"question": f"Tom has {i} apples and buys 2 more. How many now?", "answer": f"{i} + 2 = {i + 2}\n#### {i + 2}"}


def test_gsm8k_rows_take_the_answer_after_the_marker(tmp_path, tokenizer):
    train = _write(tmp_path / "train.jsonl.gz", [_gsm(i) for i in range(6)])
    test = _write(tmp_path / "test.jsonl.gz", [_gsm(i) for i in range(10, 14)])
    tr, ev = load_task(_cfg("task.name=gsm8k", f"task.train_file={train}", f"task.eval_file={test}",
                            "task.n_train=4", "task.n_eval=3", "task.instruction=' Think.'"), tokenizer)
    assert [r["answer"] for r in tr.rows] == ["2", "3", "4", "5"]
    assert [r["answer"] for r in ev.rows] == ["12", "13", "14"]
    assert tr.rows[0]["prompt"] == _gsm(0)["question"] and "How many now? Think." in tr.texts[0]
    assert tr.ids[0] == tokenizer(tr.texts[0], add_special_tokens=False)["input_ids"]


def test_jsonl_without_eval_file_holds_out_the_last_rows(tmp_path, tokenizer):
    rows = [{"prompt": f"What is {i} + 1?", "answer": i + 1} for i in range(5)] + [{"prompt": "Say hi."}]
    train = _write(tmp_path / "p.jsonl", rows)
    tr, ev = load_task(_cfg("task.name=jsonl", f"task.train_file={train}", "task.n_eval=2"), tokenizer)
    assert [r["prompt"] for r in tr.rows] == [f"What is {i} + 1?" for i in range(4)]
    assert [r["answer"] for r in tr.rows] == ["1", "2", "3", "4"]
    assert ev.rows == [{"prompt": "What is 4 + 1?", "answer": "5"}, {"prompt": "Say hi.", "answer": ""}]


@pytest.mark.parametrize("name, rows, message", [
    ("gsm8k", [_gsm(1), {"question": "Q?", "answer": "42"}], r"line 2: field 'answer' has no '#### <final answer>' line"),
    ("gsm8k", [_gsm(1), _gsm(2), {"answer": "#### 1"}], r"line 3: field 'question' must be a non-empty string"),
    ("jsonl", [{"prompt": "a"}, {"prompt": ""}], r"line 2: field 'prompt' must be a non-empty string"),
    ("jsonl", [{"prompt": "a", "answer": ["x"]}], r"line 1: field 'answer' must be a string or a number"),
    ("jsonl", [{"prompt": "a"}, "{not json"], r"line 2: malformed JSON"),
    ("jsonl", [{"prompt": "a"}, {"prompt": "long " * 300}], r"line 2: prompt is \d+ tokens after the chat template"),
])
def test_bad_rows_are_named_by_file_and_line(tmp_path, tokenizer, name, rows, message):
    train = _write(tmp_path / "bad.jsonl", rows)
    ok = _write(tmp_path / "ok.jsonl", [{"prompt": "fine", "answer": "1", "question": "fine?"}])
    with pytest.raises(ValueError, match=rf"bad.jsonl {message}"):
        load_task(_cfg(f"task.name={name}", f"task.train_file={train}", f"task.eval_file={ok}"), tokenizer)


def test_missing_file_and_missing_field(tmp_path, tokenizer):
    with pytest.raises(ValueError, match="nope.jsonl does not exist"):
        load_task(_cfg("task.name=jsonl", f"task.train_file={tmp_path / 'nope.jsonl'}"), tokenizer)
    with pytest.raises(ConfigError, match="task.name=gsm8k reads prompts from a file: set task.train_file"):
        load_config(overrides=["task.name=gsm8k"])
    small = _write(tmp_path / "small.jsonl", [{"prompt": "a"}, {"prompt": "b"}])
    with pytest.raises(ValueError, match="has 2 rows: too few to hold out task.n_eval=2"):
        load_task(_cfg("task.name=jsonl", f"task.train_file={small}", "task.n_eval=2"), tokenizer)


@pytest.mark.skipif(not GSM8K.is_dir(), reason="shared GSM8K data not present")
def test_real_gsm8k_files(tokenizer):
    tr, ev = load_task(_cfg("task.name=gsm8k", f"task.train_file={GSM8K / 'train.jsonl.gz'}",
                            f"task.eval_file={GSM8K / 'test.jsonl.gz'}", "task.n_train=40", "task.n_eval=10",
                            "model.max_prompt_tokens=2000"), tokenizer)
    assert len(tr.ids) == 40 and len(ev.ids) == 10
    assert tr.rows[0]["answer"] == "72" and all(r["answer"].lstrip("-").replace(".", "").isdigit() for r in tr.rows + ev.rows)


def test_hh_pairs_become_dialogue_prompts_and_long_ones_can_be_left_out(tmp_path, tokenizer):
    """task.name=hh: each pair's dialogue before its last answer, as chat messages in the template;
    task.long_prompts=drop leaves out (and counts) what does not fit, error names the row."""
    def pair(turns: str, i: int):
        return {"chosen": f"{turns}\n\nAssistant: yes {i}", "rejected": f"{turns}\n\nAssistant: no {i}"}
    rows = [pair("\n\nHuman: What is 2 + 2?", 0),
            pair("\n\nHuman: What is 3 + 4?\n\nAssistant: 7\n\nHuman: And 3 - 4?", 1),
            pair("\n\nHuman: " + "one two three " * 40, 2)]
    path = _write(tmp_path / "hh.jsonl", rows)
    common = ["task.name=hh", f"task.train_file={path}", f"task.eval_file={path}", "model.max_prompt_tokens=60"]
    with pytest.raises(ValueError, match=r"hh.jsonl line 3: prompt is \d+ tokens.*task.long_prompts=drop"):
        load_task(_cfg(*common), tokenizer)
    tr, _ = load_task(_cfg(*common, "task.long_prompts=drop"), tokenizer)
    assert [r["prompt"] for r in tr.rows] == [
        [{"role": "user", "content": "What is 2 + 2?"}],
        [{"role": "user", "content": "What is 3 + 4?"}, {"role": "assistant", "content": "7"},
         {"role": "user", "content": "And 3 - 4?"}]]
    assert tr.texts[1].endswith("<|im_start|>user\nAnd 3 - 4?<|im_end|>\n<|im_start|>assistant\n")


def test_jsonl_prompts_may_be_chat_messages(tmp_path, tokenizer):
    msgs = [{"role": "user", "content": "What is 1 + 1?"}, {"role": "assistant", "content": "2"},
            {"role": "user", "content": "Times 3?"}]
    path = _write(tmp_path / "p.jsonl", [{"prompt": msgs, "answer": 6}, {"prompt": "What is 5 + 5?"}])
    tr, _ = load_task(_cfg("task.name=jsonl", f"task.train_file={path}", f"task.eval_file={path}"), tokenizer)
    assert tr.rows[0] == {"prompt": msgs, "answer": "6"} and tr.texts[0].count("<|im_start|>user") == 2
    bad = _write(tmp_path / "bad.jsonl", [{"prompt": [{"role": "assistant", "content": "hi"}]}])
    with pytest.raises(ValueError, match="bad.jsonl line 1: field 'prompt' as a list must be chat messages"):
        load_task(_cfg("task.name=jsonl", f"task.train_file={bad}", f"task.eval_file={bad}"), tokenizer)
