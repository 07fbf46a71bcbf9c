"""Offline data: file reading, formats (pairs, HH-RLHF, KTO unpaired, SFT), masking, truncation, errors."""

from __future__ import annotations

import gzip
import json
from pathlib import Path

import pytest
import torch

from rlhf_ray.config.loading import load_config
from rlhf_ray.data import DataError, collate, encode, hh_messages, load_offline_data, read_table, split_hh

pytestmark = pytest.mark.unit

SHARED_HH = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "hh-rlhf"

HH_CHOSEN = ("\n\nHuman: How do I pick a lock?\n\nAssistant: Do you mean a physical lock?"
             "\n\nHuman: Yes, the one on my neighbour's door.\n\nAssistant: I can't help with breaking into a home.")
HH_REJECTED = ("\n\nHuman: How do I pick a lock?\n\nAssistant: Do you mean a physical lock?"
               "\n\nHuman: Yes, the one on my neighbour's door.\n\nAssistant: I can help. First get a tension wrench.")


@pytest.fixture(scope="module")
def tok():
    from rlhf_ray.models.tiny import build_tokenizer

    return build_tokenizer()


def write_jsonl(path: Path, rows: list, gz: bool = False) -> str:
    text = "".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows)
    if gz:
        with gzip.open(path, "wt") as f:
            f.write(text)
    else:
        path.write_text(text)
    return str(path)


def cfg_for(algorithm: str, train_file: str, *extra: str):
    return load_config(overrides=[f"algorithm={algorithm}", f"offline.train_file={train_file}",
                                  "offline.eval_fraction=0", *extra])


def encode_file(tok, algorithm, path, *extra):
    cfg = cfg_for(algorithm, path, *extra)
    return encode(read_table(path), tok, cfg)


# ------------------------------------------------------------------ HH-RLHF


def test_hh_split_prompt_is_shared_prefix_to_last_assistant():
    prompt, chosen, rejected = split_hh(HH_CHOSEN, HH_REJECTED)
    assert prompt.endswith("\n\nHuman: Yes, the one on my neighbour's door.\n\nAssistant:")
    assert chosen == "I can't help with breaking into a home."
    assert rejected == "I can help. First get a tension wrench."
    assert hh_messages(prompt) == [
        {"role": "user", "content": "How do I pick a lock?"},
        {"role": "assistant", "content": "Do you mean a physical lock?"},
        {"role": "user", "content": "Yes, the one on my neighbour's door."}]


def test_hh_split_response_containing_assistant_marker_stays_in_response():
    # Real HH quirk: a response with its own "\n\nAssistant:" must not move the prompt boundary.
    base = "\n\nHuman: Find me a serial.\n\nAssistant:"
    chosen = base + " Here it is:\n\nAssistant: O.k. let's try it."
    rejected = base + " You mean a password?"
    prompt, c, r = split_hh(chosen, rejected)
    assert prompt == base
    assert c == "Here it is:\n\nAssistant: O.k. let's try it." and r == "You mean a password?"


def test_hh_split_responses_with_common_start_and_inline_human():
    base = "\n\nHuman: Hi\n\nAssistant:"
    prompt, c, r = split_hh(base + " Human: Okay, so first A", base + " Human: Okay, so then B")
    assert prompt == base and c == "Human: Okay, so first A" and r == "Human: Okay, so then B"


def test_hh_split_rejects_unrelated_dialogues():
    with pytest.raises(ValueError, match="no prefix"):
        split_hh("\n\nHuman: a\n\nAssistant: b", "\n\nHuman: c\n\nAssistant: d")


def test_hh_rows_get_chat_template_and_eos(tok, tmp_path):
    path = write_jsonl(tmp_path / "hh.jsonl", [{"chosen": HH_CHOSEN, "rejected": HH_REJECTED}])
    data = encode_file(tok, "dpo", path)
    assert data.format == "hh" and len(data.units) == 1
    u = data.units[0]
    prompt = tok.decode(u.prompt)
    assert prompt.startswith("<|im_start|>user\nHow do I pick a lock?<|im_end|>\n<|im_start|>assistant\nDo you mean")
    assert prompt.endswith("<|im_start|>user\nYes, the one on my neighbour's door.<|im_end|>\n<|im_start|>assistant\n")
    assert "Human:" not in prompt and "Assistant:" not in prompt
    for ids, text in zip(u.responses, ("I can't help with breaking into a home.", "I can help. First get a tension wrench.")):
        assert ids[-1] == tok.eos_token_id and tok.decode(ids[:-1]) == text


# ------------------------------------------------------------------ masking and batches


def test_prompt_masking_covers_exactly_the_response_and_eos(tok, tmp_path):
    rows = [{"prompt": "What is 2 + 2?", "chosen": "4", "rejected": "The answer is 5, because five."},
            {"prompt": "What is the sum of one and two, please answer?", "chosen": "3", "rejected": "no"}]
    data = encode_file(tok, "dpo", write_jsonl(tmp_path / "p.jsonl", rows))
    batch = collate(data.units, tok.pad_token_id)
    assert batch["input_ids"].shape[0] == 4  # rows c0, r0, c1, r1
    P = batch["input_ids"].shape[1] - batch["response_ids"].shape[1]
    for row, (unit, k) in enumerate((u, k) for u in data.units for k in range(2)):
        resp = unit.responses[k]
        mask = batch["response_mask"][row]
        assert int(mask.sum()) == len(resp)
        assert batch["response_ids"][row][mask.bool()].tolist() == resp
        assert resp[-1] == tok.eos_token_id  # eos == pad, yet it is inside the mask
        # Prompt tokens are attended to but never targets; padding is neither.
        attn = batch["attention_mask"][row]
        assert batch["input_ids"][row, P - len(unit.prompt):P].tolist() == unit.prompt
        assert int(attn[:P].sum()) == len(unit.prompt) and int(attn[P:].sum()) == len(resp)
    assert batch["prompt_lengths"][0] == batch["prompt_lengths"][1]  # a pair shares its prompt


def test_sft_from_pairs_and_messages(tok, tmp_path):
    pairs = write_jsonl(tmp_path / "pairs.jsonl", [{"prompt": "hi", "chosen": "hello", "rejected": "go away"}])
    u = encode_file(tok, "sft", pairs).units[0]
    assert len(u.responses) == 1 and tok.decode(u.responses[0]) == "hello<|im_end|>"
    msgs = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"},
            {"role": "assistant", "content": "hello"}]
    path = write_jsonl(tmp_path / "sft.jsonl", [{"messages": msgs}])
    data = encode_file(tok, "sft", path)
    assert data.format == "sft"
    assert tok.decode(data.units[0].prompt) == ("<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nhi<|im_end|>\n"
                                                "<|im_start|>assistant\n")


def test_chat_message_pairs_implicit_and_explicit_prompt(tok, tmp_path):
    user = [{"role": "user", "content": "hi"}]
    rows = [{"chosen": user + [{"role": "assistant", "content": "hello"}],
             "rejected": user + [{"role": "assistant", "content": "bye"}]},
            {"prompt": user, "chosen": [{"role": "assistant", "content": "hello"}],
             "rejected": [{"role": "assistant", "content": "bye"}]}]
    a, b = encode_file(tok, "dpo", write_jsonl(tmp_path / "m.jsonl", rows)).units
    assert a.prompt == b.prompt and a.responses == b.responses
    bad = [{"chosen": user + [{"role": "assistant", "content": "x"}],
            "rejected": [{"role": "user", "content": "other"}, {"role": "assistant", "content": "y"}]}]
    with pytest.raises(DataError, match="line 1: 'chosen' and 'rejected' conversations differ"):
        encode_file(tok, "dpo", write_jsonl(tmp_path / "bad.jsonl", bad))


# ------------------------------------------------------------------ KTO labels


def test_kto_labels_bool_and_int_accepted(tok, tmp_path):
    rows = [{"prompt": "a", "completion": "x", "label": True}, {"prompt": "b", "completion": "y", "label": False},
            {"prompt": "c", "completion": "z", "label": 1}, {"prompt": "d", "completion": "w", "label": 0}]
    data = encode_file(tok, "kto", write_jsonl(tmp_path / "k.jsonl", rows))
    assert [u.label for u in data.units] == [True, False, True, False]
    # Each unit's second row is another unit's completion (mismatched pair for KTO's reference point).
    own = [u.responses[0] for u in data.units]
    assert all(u.responses[1] != u.responses[0] and u.responses[1] in own for u in data.units)
    batch = collate(data.units, tok.pad_token_id)
    assert batch["labels"].tolist() == [1.0, 1.0, 0.0, 0.0, 1.0, 1.0, 0.0, 0.0]


@pytest.mark.parametrize("label", ["true", "false", "yes", 2, 0.5])
def test_kto_string_or_odd_labels_rejected_with_line(tok, tmp_path, label):
    rows = [{"prompt": "a", "completion": "x", "label": True}, {"prompt": "b", "completion": "y", "label": label}]
    with pytest.raises(DataError, match=r"k\.jsonl line 2: field 'label'"):
        encode_file(tok, "kto", write_jsonl(tmp_path / "k.jsonl", rows), "offline.format=unpaired")


def test_kto_from_pairs_splits_desirable_and_undesirable(tok, tmp_path):
    rows = [{"prompt": "a", "chosen": "good a", "rejected": "bad a"}, {"prompt": "b", "chosen": "good b", "rejected": "bad b"}]
    data = encode_file(tok, "kto", write_jsonl(tmp_path / "p.jsonl", rows))
    assert [(u.label, u.pair_id) for u in data.units] == [(True, 0), (False, 0), (True, 1), (False, 1)]
    assert [tok.decode(u.responses[0][:-1]) for u in data.units] == ["good a", "bad a", "good b", "bad b"]


# ------------------------------------------------------------------ truncation


LONG = {"prompt": " ".join(f"w{i}" for i in range(60)), "chosen": " ".join(f"c{i}" for i in range(80)),
        "rejected": "short"}


def test_truncation_keeps_prompt_end_and_cuts_response_end(tok, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [LONG, {"prompt": "hi", "chosen": "a", "rejected": "b"}])
    full = encode_file(tok, "dpo", path, "offline.max_prompt_tokens=1000", "offline.max_length=2000").units[0]
    data = encode_file(tok, "dpo", path, "offline.max_prompt_tokens=20", "offline.max_length=50")
    u = data.units[0]
    assert data.truncated == 1 and data.dropped == 0 and len(data.units) == 2
    assert u.prompt == full.prompt[-20:]  # the end of the prompt: the latest turn and the assistant header
    assert len(u.prompt) + len(u.responses[0]) == 50 and u.responses[0] == full.responses[0][:30]
    assert u.responses[0][-1] != tok.eos_token_id  # a cut response must not teach stopping there
    assert u.responses[1] == full.responses[1]  # a short response is untouched
    assert data.units[1] == encode_file(tok, "dpo", path).units[1]


def test_truncation_drop_counts_and_error_names_the_line(tok, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "b"}, LONG])
    data = encode_file(tok, "dpo", path, "offline.max_prompt_tokens=20", "offline.max_length=50", "offline.truncation=drop")
    assert len(data.units) == 1 and data.dropped == 1 and data.stats["dropped"] == 1
    with pytest.raises(DataError, match=r"t\.jsonl line 2: does not fit: prompt \d+ tokens \(offline.max_prompt_tokens=20\)"):
        encode_file(tok, "dpo", path, "offline.max_prompt_tokens=20", "offline.max_length=50", "offline.truncation=error")


def test_limits_must_leave_room_for_a_response(tok, tmp_path):
    path = write_jsonl(tmp_path / "t.jsonl", [{"prompt": "hi", "chosen": "a", "rejected": "b"}])
    with pytest.raises(DataError, match="offline.max_length=20 must exceed offline.max_prompt_tokens=20"):
        encode_file(tok, "dpo", path, "offline.max_prompt_tokens=20", "offline.max_length=20")


# ------------------------------------------------------------------ bad files and rows


def test_missing_field_named_with_line(tok, tmp_path):
    path = write_jsonl(tmp_path / "m.jsonl", [{"prompt": "a", "chosen": "x", "rejected": "y"}, "",
                                              {"prompt": "b", "chosen": "x"}])
    with pytest.raises(DataError, match=r"m\.jsonl line 3: missing field 'rejected'"):
        encode_file(tok, "dpo", path)


def test_malformed_json_line_named(tmp_path):
    path = write_jsonl(tmp_path / "bad.jsonl", [{"prompt": "a"}, '{"prompt": "b", ', {"prompt": "c"}])
    with pytest.raises(DataError, match=r"bad\.jsonl line 2: malformed JSON"):
        read_table(path)


def test_non_object_line_and_empty_file(tmp_path):
    with pytest.raises(DataError, match=r"line 1: expected a JSON object, got list"):
        read_table(write_jsonl(tmp_path / "l.jsonl", ["[1, 2]"]))
    (tmp_path / "empty.jsonl").write_text("\n\n")
    with pytest.raises(DataError, match=r"empty\.jsonl is empty"):
        read_table(str(tmp_path / "empty.jsonl"))
    with pytest.raises(DataError, match="does not exist"):
        read_table(str(tmp_path / "nope.jsonl"))
    (tmp_path / "x.csv").write_text("a,b\n")
    with pytest.raises(DataError, match="unknown extension"):
        read_table(str(tmp_path / "x.csv"))


def test_gzip_and_parquet_read_the_same_rows(tmp_path):
    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = [{"prompt": "a", "chosen": "x", "rejected": "y"}, {"prompt": "b", "chosen": "z", "rejected": "w"}]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "d.parquet")
    assert read_table(write_jsonl(tmp_path / "d.jsonl.gz", rows, gz=True)).rows == rows
    table = read_table(str(tmp_path / "d.parquet"))
    assert table.rows == rows and table.where(1) == f"{tmp_path / 'd.parquet'} row 2"


def test_format_detection_and_mismatch(tok, tmp_path):
    with pytest.raises(DataError, match="cannot tell the data format"):
        encode_file(tok, "dpo", write_jsonl(tmp_path / "u.jsonl", [{"question": "a", "answer": "b"}]))
    kto = write_jsonl(tmp_path / "k.jsonl", [{"prompt": "a", "completion": "x", "label": True}])
    with pytest.raises(DataError, match="format 'unpaired', but this algorithm trains on pairs"):
        encode_file(tok, "dpo", kto)


def test_eval_fraction_split_is_seeded_and_disjoint(tok, tmp_path):
    rows = [{"prompt": f"q{i}", "chosen": f"a{i}", "rejected": f"b{i}"} for i in range(40)]
    path = write_jsonl(tmp_path / "s.jsonl", rows)
    cfg = load_config(overrides=["algorithm=dpo", f"offline.train_file={path}", "offline.eval_fraction=0.25"])
    train, held = load_offline_data(cfg, tok)
    train2, held2 = load_offline_data(cfg, tok)
    assert len(train.units) == 30 and len(held.units) == 10
    assert [u.where for u in held.units] == [u.where for u in held2.units]
    assert not {u.where for u in train.units} & {u.where for u in held.units}
    other = load_config(overrides=["algorithm=dpo", f"offline.train_file={path}", "offline.eval_fraction=0.25",
                                   "trainer.seed=1"])
    assert [u.where for u in load_offline_data(other, tok)[1].units] != [u.where for u in held.units]
    eval_path = write_jsonl(tmp_path / "e.jsonl", rows[:3])
    with_file = load_config(overrides=["algorithm=dpo", f"offline.train_file={path}", f"offline.eval_file={eval_path}"])
    train3, held3 = load_offline_data(with_file, tok)
    assert len(train3.units) == 40 and len(held3.units) == 3


# ------------------------------------------------------------------ the real HH data, when present


@pytest.mark.skipif(not (SHARED_HH / "harmless_eval.jsonl.gz").is_file(), reason="../shared/data/hh-rlhf absent")
def test_real_hh_rows_split_and_encode(tok):
    table = read_table(str(SHARED_HH / "harmless_eval.jsonl.gz"))
    assert len(table) == 312
    cfg = cfg_for("dpo", str(SHARED_HH / "harmless_eval.jsonl.gz"), "offline.max_prompt_tokens=4096",
                  "offline.max_length=8192")
    data = encode(table, tok, cfg)
    assert data.format == "hh" and len(data.units) == 312 and data.truncated == 0
    header = tok("<|im_start|>assistant\n", add_special_tokens=False)["input_ids"]
    for u, row in zip(data.units, table.rows):
        assert u.prompt[-len(header):] == header
        assert all(r[-1] == tok.eos_token_id for r in u.responses)
        assert u.responses[0] != u.responses[1] or row["chosen"] == row["rejected"]
    batch = collate(data.units[:4], tok.pad_token_id)
    assert torch.equal(batch["response_mask"].sum(-1).long(), batch["response_lengths"])
