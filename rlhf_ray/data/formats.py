"""Row formats of offline data, and how each algorithm reads them.

A row is parsed into one of three records: a *pair* (prompt, chosen, rejected), an *unpaired*
example (prompt, completion, label) or an *SFT* example (prompt, response). A prompt is a question
string or a list of chat messages; responses are plain text (the model's turn, without template).

Algorithms then take the records they need: preference losses and reward models take pairs; KTO
takes unpaired examples, or pairs split into a desirable (chosen) and an undesirable (rejected)
example; SFT takes SFT examples, or the chosen side of pairs.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from rlhf_ray.data.files import DataError, Table

HH_ASSISTANT = "\n\nAssistant:"
_HH_TURN = re.compile(r"\n\n(Human|Assistant):")
FIELDS = {"pairs": ("prompt", "chosen", "rejected"), "hh": ("chosen", "rejected"),
          "unpaired": ("prompt", "completion", "label"), "sft": ("prompt", "response")}
Prompt = str | list[dict]


@dataclass
class TextExample:
    """What one training unit is made of, before tokenization."""

    prompt: Prompt
    responses: list[str]  # pairs: [chosen, rejected]; KTO and SFT: [completion]
    where: str
    label: bool | None = None  # KTO: desirable?
    pair_id: int | None = None  # KTO examples split from one pair share it


def detect_format(table: Table) -> str:
    keys = set(table.rows[0])
    if {"chosen", "rejected"} <= keys:
        if "prompt" in keys or isinstance(table.rows[0]["chosen"], list):
            return "pairs"
        if HH_ASSISTANT in str(table.rows[0]["chosen"]):
            return "hh"
    if {"prompt", "completion", "label"} <= keys:
        return "unpaired"
    if "messages" in keys or {"prompt", "response"} <= keys:
        return "sft"
    raise DataError(
        f"{table.where(0)}: cannot tell the data format from its fields {sorted(keys)}; expected prompt/chosen/rejected "
        "(pairs), chosen/rejected HH dialogues (hh), prompt/completion/label (unpaired) or prompt/response or "
        "messages (sft); set offline.format to say which")


# ------------------------------------------------------------------ HH-RLHF dialogues


def split_hh(chosen: str, rejected: str) -> tuple[str, str, str]:
    """(prompt, chosen response, rejected response) of an HH-RLHF pair.

    The prompt is the shared prefix up to and including its last "\\n\\nAssistant:". Searching the
    *shared* prefix, not each dialogue, matters: a few HH responses themselves contain
    "\\n\\nAssistant:" and would otherwise swallow part of the answer into the prompt."""
    shared = os.path.commonprefix([chosen, rejected])
    cut = shared.rfind(HH_ASSISTANT)
    if cut < 0:
        raise ValueError("chosen and rejected share no prefix ending in '\\n\\nAssistant:'")
    end = cut + len(HH_ASSISTANT)
    return chosen[:end], chosen[end:].strip(), rejected[end:].strip()


def hh_messages(prompt: str) -> list[dict]:
    """'\\n\\nHuman: a\\n\\nAssistant: b\\n\\nHuman: c\\n\\nAssistant:' → user/assistant/user messages;
    the final empty Assistant turn becomes the template's generation prompt."""
    parts = _HH_TURN.split(prompt)
    if parts[0].strip():
        raise ValueError("the dialogue does not start with '\\n\\nHuman:'")
    messages = [{"role": "user" if who == "Human" else "assistant", "content": text.strip()}
                for who, text in zip(parts[1::2], parts[2::2])]
    if not messages or messages[-1] != {"role": "assistant", "content": ""}:
        raise ValueError("the prompt does not end with an empty Assistant turn")
    return messages[:-1]


# ------------------------------------------------------------------ fields


def _field(row: dict, name: str, fmt: str, where: str):
    if row.get(name) is None:
        raise DataError(f"{where}: missing field '{name}' (format '{fmt}' needs {', '.join(FIELDS[fmt])})")
    return row[name]


def _messages(value, name: str, where: str) -> list[dict]:
    if not isinstance(value, list) or not value:
        raise DataError(f"{where}: field '{name}' must be a string or a non-empty list of chat messages")
    for i, m in enumerate(value):
        if not (isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)):
            raise DataError(f"{where}: field '{name}' message {i} must be {{\"role\": str, \"content\": str}}, got {m!r}")
    return value


def _prompt(value, name: str, where: str) -> Prompt:
    return value if isinstance(value, str) else _messages(value, name, where)


def _response(value, name: str, where: str) -> tuple[list[dict] | None, str]:
    """A response string, or messages ending with the assistant's turn (earlier messages are an
    implicit prompt: returned so the caller can check them against the prompt)."""
    if isinstance(value, str):
        return None, value
    msgs = _messages(value, name, where)
    if msgs[-1]["role"] != "assistant":
        raise DataError(f"{where}: field '{name}' must end with an assistant message, not '{msgs[-1]['role']}'")
    return msgs[:-1], msgs[-1]["content"]


def parse_label(value, where: str) -> bool:
    """KTO's desirable flag. Strings are refused rather than guessed at: "false" is truthy in
    Python, and a silently flipped label trains the model toward the wrong answers."""
    if isinstance(value, bool):
        return value
    if isinstance(value, int) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        raise DataError(f"{where}: field 'label' is the string {value!r}; write a JSON boolean, true or false "
                        "without quotes (0 and 1 are accepted too)")
    raise DataError(f"{where}: field 'label' must be true or false (or 0/1), got {value!r}")


# ------------------------------------------------------------------ rows → records


def _pair(row: dict, fmt: str, where: str) -> tuple[Prompt, str, str]:
    if fmt == "hh":
        chosen, rejected = (_field(row, k, fmt, where) for k in ("chosen", "rejected"))
        if not (isinstance(chosen, str) and isinstance(rejected, str)):
            raise DataError(f"{where}: HH fields 'chosen' and 'rejected' must be dialogue strings")
        try:
            prompt, c, r = split_hh(chosen, rejected)
            return hh_messages(prompt), c, r
        except ValueError as e:
            raise DataError(f"{where}: not an HH-RLHF dialogue pair: {e}") from None
    (pc, c), (pr, r) = (_response(_field(row, k, fmt, where), k, where) for k in ("chosen", "rejected"))
    if row.get("prompt") is None and pc:  # conversations whose last turn is the response
        if pc != pr:
            raise DataError(f"{where}: 'chosen' and 'rejected' conversations differ before their last message")
        return pc, c, r
    prompt = _prompt(_field(row, "prompt", fmt, where), "prompt", where)
    return prompt, c, r


def _sft(row: dict, where: str) -> tuple[Prompt, str]:
    if row.get("messages") is not None:
        prompt, response = _response(row["messages"], "messages", where)
        if not prompt:
            raise DataError(f"{where}: field 'messages' needs at least one message before the assistant's reply")
        return prompt, response
    prompt = _prompt(_field(row, "prompt", "sft", where), "prompt", where)
    return prompt, _response(_field(row, "response", "sft", where), "response", where)[1]


NEEDS = {"pairs": ("pairs", "hh"), "unpaired": ("unpaired", "pairs", "hh"), "sft": ("sft", "pairs", "hh")}


def text_examples(table: Table, fmt: str, kind: str) -> list[TextExample]:
    """Every row of ``table`` as the examples an algorithm of ``kind`` (pairs/unpaired/sft) trains on."""
    if fmt not in NEEDS[kind]:
        raise DataError(f"{table.source} is in format '{fmt}', but this algorithm trains on {kind} data "
                        f"(formats {', '.join(NEEDS[kind])})")
    out = []
    for i, row in enumerate(table.rows):
        where = table.where(i)
        if fmt in ("pairs", "hh"):
            prompt, c, r = _pair(row, fmt, where)
            if kind == "pairs":
                out.append(TextExample(prompt, [c, r], where))
            elif kind == "unpaired":  # KTO on pairs: chosen is desirable, rejected undesirable
                out += [TextExample(prompt, [c], where, True, i), TextExample(prompt, [r], where, False, i)]
            else:  # SFT on pairs imitates the chosen response
                out.append(TextExample(prompt, [c], where))
        elif fmt == "unpaired":
            prompt = _prompt(_field(row, "prompt", fmt, where), "prompt", where)
            completion = _response(_field(row, "completion", fmt, where), "completion", where)[1]
            out.append(TextExample(prompt, [completion], where, parse_label(_field(row, "label", fmt, where), where)))
        else:
            prompt, response = _sft(row, where)
            out.append(TextExample(prompt, [response], where))
    return out
