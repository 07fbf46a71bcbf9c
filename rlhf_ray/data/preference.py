"""Offline data → tokenized units, and units → batches.

A *unit* is what one optimiser step counts: a pair (rows chosen, rejected), a KTO example (rows
completion, mismatched completion) or an SFT example (one row). A unit's rows share its prompt and
sit next to each other in a batch, so contiguous shards and micro-batches never split a pair.

Prompts get the model's chat template (HH dialogues are converted to chat messages first, so the
model sees its own format); response tokens end with the EOS token, the model must learn to stop.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

import torch

from rlhf_ray.config import Config, OfflineConfig
from rlhf_ray.data.batch import Batch, build_batch
from rlhf_ray.data.chat import chat_texts
from rlhf_ray.data.files import DataError, Table, read_table
from rlhf_ray.data.formats import TextExample, detect_format, text_examples

KIND = {"sft": "sft", "unpaired": "unpaired"}  # by the row's update; every other one trains on pairs


@dataclass
class Unit:
    prompt: list[int]
    responses: list[list[int]]
    where: str
    label: bool | None = None
    pair_id: int | None = None


@dataclass
class Encoded:
    """A split's units plus what the truncation policy did to its rows."""

    units: list[Unit]
    source: str
    format: str
    rows: int
    truncated: int = 0
    dropped: int = 0
    stats: dict = field(default_factory=dict)

    def describe(self) -> str:
        return (f"{self.source}: {self.rows} rows (format {self.format}) → {len(self.units)} units; "
                f"{self.truncated} truncated, {self.dropped} dropped")


class Encoder:
    """Tokenizes examples and applies ``offline.truncation`` to those over the limits."""

    def __init__(self, tokenizer, oc: OfflineConfig):
        if oc.max_length <= oc.max_prompt_tokens:
            raise DataError(f"offline.max_length={oc.max_length} must exceed offline.max_prompt_tokens="
                            f"{oc.max_prompt_tokens} to leave room for a response")
        if tokenizer.eos_token_id is None:
            raise DataError("the tokenizer has no EOS token; responses must end with one")
        self.tok, self.oc = tokenizer, oc
        self.truncated = self.dropped = 0

    def prompt_ids(self, prompt) -> list[int]:
        if isinstance(prompt, str):
            text = chat_texts(self.tok, [prompt], None, "")[0]
        else:
            text = self.tok.apply_chat_template(prompt, tokenize=False, add_generation_prompt=True)
        return self.tok(text, add_special_tokens=False)["input_ids"]

    def response_ids(self, text: str) -> list[int]:
        return self.tok(text, add_special_tokens=False)["input_ids"] + [self.tok.eos_token_id]

    def encode(self, ex: TextExample) -> Unit | None:
        """The example's unit, cut to fit; None when the policy drops it."""
        prompt, responses = self.prompt_ids(ex.prompt), [self.response_ids(r) for r in ex.responses]
        limit_p, limit = self.oc.max_prompt_tokens, self.oc.max_length
        room = limit - min(len(prompt), limit_p)
        if len(prompt) <= limit_p and all(len(r) <= room for r in responses):
            return Unit(prompt, responses, ex.where, ex.label, ex.pair_id)
        if self.oc.truncation == "error":
            longest = max(len(r) for r in responses)
            raise DataError(
                f"{ex.where}: does not fit: prompt {len(prompt)} tokens (offline.max_prompt_tokens={limit_p}), "
                f"longest response {longest} tokens (room {room} of offline.max_length={limit}); raise the limits "
                "or set offline.truncation to truncate or drop")
        if self.oc.truncation == "drop":
            self.dropped += 1
            return None
        self.truncated += 1
        # Keep the end of the prompt (the latest turns matter most); cut responses at the end. A cut
        # response keeps no EOS: the text did not end there, so the model must not learn to stop there.
        return Unit(prompt[-limit_p:], [r[:room] for r in responses], ex.where, ex.label, ex.pair_id)


def add_mismatched(units: list[Unit], max_length: int, seed: int) -> None:
    """Gives each KTO unit a second row: its prompt with another unit's completion.

    These mismatched pairs estimate KTO's reference point z0 = KL(π‖π_ref) (Ethayarajh et al. 2024,
    as in TRL). Partners are fixed per dataset (a seeded cycle), so the reference log-probs of the
    rows can be cached like any others."""
    order = list(range(len(units)))
    random.Random(seed).shuffle(order)
    partner = {order[k]: order[(k + 1) % len(order)] for k in range(len(order))}
    for i, u in enumerate(units):
        other = units[partner[i]].responses[0]
        u.responses.append(other[:max(1, max_length - len(u.prompt))])


def encode(table: Table, tokenizer, cfg: Config) -> Encoded:
    oc = cfg.offline
    fmt = detect_format(table) if oc.format == "auto" else oc.format
    kind = KIND.get(cfg.spec.update, "pairs")
    encoder = Encoder(tokenizer, oc)
    units = [u for u in map(encoder.encode, text_examples(table, fmt, kind)) if u is not None]
    if not units:
        raise DataError(f"{table.source}: no rows left after offline.truncation={oc.truncation} "
                        f"({encoder.dropped} dropped); raise offline.max_length or offline.max_prompt_tokens")
    if kind == "unpaired":
        add_mismatched(units, oc.max_length, cfg.trainer.seed)
    out = Encoded(units, table.source, fmt, len(table), encoder.truncated, encoder.dropped)
    out.stats = {"units": len(units), "rows": len(table), "truncated": encoder.truncated, "dropped": encoder.dropped,
                 "prompt_tokens_mean": sum(len(u.prompt) for u in units) / len(units),
                 "response_tokens_mean": sum(len(r) for u in units for r in u.responses) / sum(len(u.responses) for u in units)}
    return out


def split_table(table: Table, fraction: float, seed: int) -> tuple[Table, Table | None]:
    """Seeded hold-out of ``fraction`` of the rows (at least one row each side)."""
    if fraction <= 0:
        return table, None
    if len(table) < 2:
        raise DataError(f"{table.source} has {len(table)} row: too few to hold out offline.eval_fraction={fraction}; "
                        "set offline.eval_file or offline.eval_fraction=0")
    order = list(range(len(table)))
    random.Random(seed).shuffle(order)
    n_eval = min(max(1, round(fraction * len(table))), len(table) - 1)
    return table.subset(sorted(order[n_eval:])), table.subset(sorted(order[:n_eval]))


def load_offline_data(cfg: Config, tokenizer) -> tuple[Encoded, Encoded | None]:
    """(train, eval) units from ``offline.train_file`` and ``offline.eval_file`` (or a held-out share)."""
    oc = cfg.offline
    train = read_table(oc.train_file)
    if oc.eval_file:
        held_out = read_table(oc.eval_file)
    else:
        train, held_out = split_table(train, oc.eval_fraction, cfg.trainer.seed)
    return encode(train, tokenizer, cfg), (encode(held_out, tokenizer, cfg) if held_out is not None else None)


def collate(units: list[Unit], pad_id: int) -> Batch:
    """Units → one batch, their rows adjacent ([c0, r0, c1, r1, ...] for pairs); KTO adds labels."""
    prompts = [u.prompt for u in units for _ in u.responses]
    batch = build_batch(prompts, [r for u in units for r in u.responses], pad_id)
    if units[0].label is not None:
        batch["labels"] = torch.tensor([float(u.label) for u in units for _ in u.responses])
    return batch
