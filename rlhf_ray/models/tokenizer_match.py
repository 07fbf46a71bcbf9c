"""Whether two tokenizers turn the same text into the same ids: a reward model's against the policy's.

A reward model fine-tuned from the policy (rlhf_ray's reward-model training starts from it) shares
its tokenizer and can score the policy's token ids as they are. One built on another base reads
other ids for the same text, another end token and another chat template: given the policy's ids
it scores garbage, without any error. rlhf_ray.roles.reward asks this module once, at load, and
re-tokenizes the texts when anything differs.
"""

from __future__ import annotations

import json

SPECIAL_IDS = ("bos_token_id", "eos_token_id", "pad_token_id", "unk_token_id")


def tokenizer_differences(a, b) -> list[str]:
    """What differs between tokenizers ``a`` and ``b`` (empty: they encode every text alike): the
    vocabulary (added tokens included), the special tokens' ids, the chat template, and for fast
    tokenizers the rules that split a text (normalizer, pre-tokenizer, the model's merges), which a
    vocabulary alone does not fix."""
    out = []
    va, vb = a.get_vocab(), b.get_vocab()
    if va != vb:
        out.append(f"vocabulary ({len(va)} against {len(vb)} tokens{', other ids' if len(va) == len(vb) else ''})")
    for attr in SPECIAL_IDS:
        if getattr(a, attr) != getattr(b, attr):
            out.append(f"{attr} ({getattr(a, attr)} against {getattr(b, attr)})")
    if sorted(a.all_special_ids) != sorted(b.all_special_ids):
        out.append("special tokens")
    if a.chat_template != b.chat_template:
        out.append("chat template")
    if _splitting_rules(a) != _splitting_rules(b):
        out.append("tokenization rules (normalizer, pre-tokenizer or merges)")
    return out


def _splitting_rules(tokenizer) -> tuple | None:
    """The parts of a fast tokenizer's definition that decide how a text splits; None for a slow one."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return None
    spec = json.loads(backend.to_str())
    return tuple(json.dumps(spec.get(k), sort_keys=True) for k in ("normalizer", "pre_tokenizer", "model"))
