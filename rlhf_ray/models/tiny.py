"""Tiny random models with locally trained tokenizers, for tests: a Llama and a Gemma 3.

Nothing here touches the hub: each tokenizer is a BPE trained on a small built-in corpus, so any
text (prompts, sampled garbage) round-trips. The two families mirror the two shipped models, so
code that works on a tiny model meets the same conventions on the real one:

* ``llama`` (the default) mirrors SmolLM2: byte-level BPE, ChatML, <|endoftext|>=0, <|im_start|>=1,
  <|im_end|>=2, eos == pad, 512 tokens.
* ``gemma3`` mirrors the Gemma 3 export (rlhf_ray.models.gemma3): a BPE over "▁"-joined words with
  byte fallback (Gemma's kind of tokenizer, GemmaTokenizer), <pad>=0, <eos>=1, <bos>=2, <unk>=3,
  <mask>=4, then the 256 byte tokens, pad != eos, 640 tokens; the same plain-text template, which
  begins with <bos>, and <bos> added by a plain ``tokenizer(text)`` too. The model has Gemma 3's
  parts: GQA (2 query heads, 1 key/value head), q/k norms, the four norms per layer, scaled
  embeddings, tied head, and sliding-window layers beside a global one, with an 8-token window
  that the test prompts overrun (so a sliding window honoured differently by vLLM, by packing or
  by transformers shows as a log-prob gap).

So a test can use two models whose vocabularies, ids and templates all differ (a reward model
with another tokenizer than the policy's).
"""
from __future__ import annotations

import json
import os

from .gemma3 import BASE_TEMPLATE
from .prepare import export_atomically

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
GEMMA_SPECIAL_TOKENS = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>"]  # ids 0-4, as in Gemma 3
GEMMA_BYTE_TOKENS = [f"<0x{i:02X}>" for i in range(256)]  # byte fallback: ids 5-260
KINDS = ("causal_lm", "reward")
FAMILIES = ("llama", "gemma3")
VOCAB_SIZES = {"llama": 512, "gemma3": 640}
# head_dim = 64 / 2 = 32: vLLM's CPU attention backend rejects smaller heads.
TINY_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=2,
    num_attention_heads=2,
    num_key_value_heads=2,
    intermediate_size=128,
    max_position_embeddings=512,
    tie_word_embeddings=True,  # as SmolLM2: the weight sync must handle tied heads
)
TINY_GEMMA3_CONFIG = dict(
    hidden_size=64,
    num_hidden_layers=3,
    num_attention_heads=2,
    num_key_value_heads=1,
    head_dim=32,  # vLLM's CPU attention backend rejects smaller heads
    query_pre_attn_scalar=32,
    intermediate_size=128,
    max_position_embeddings=512,
    sliding_window=8,
    layer_types=["sliding_attention", "sliding_attention", "full_attention"],
    tie_word_embeddings=True,
)


def _corpus() -> list[str]:
    words = (
        "zero one two three four five six seven eight nine ten plus minus times equals "
        "what is the answer sum difference product number question so result because"
    ).split()
    lines = [" ".join(words)]
    for a in range(0, 100, 7):
        for b in range(0, 100, 11):
            lines.append(f"What is {a} + {b}? The answer is {a + b}.")
            lines.append(f"What is {a} - {b}? {a} - {b} = {a - b}")
    lines += [
        "<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n",
        "<|im_start|>user\nWhat is 2 + 2?<|im_end|>\n<|im_start|>assistant\n4<|im_end|>\n",
        "#### 42",
    ]
    return lines


def _gemma_corpus() -> list[str]:
    """The same text in the plain template instead of ChatML."""
    return [line for line in _corpus() if "<|im_" not in line] + [
        "You are a helpful assistant.\n\nUser: What is 2 + 2?\nAssistant: 4"]


def build_tokenizer(vocab_size: int = VOCAB_SIZES["llama"]):
    """Byte-level BPE (digits split one by one, as in SmolLM2) padded to exactly vocab_size."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Digits(individual_digits=True), pre_tokenizers.ByteLevel(add_prefix_space=False)]
    )
    tok.decoder = decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(SPECIAL_TOKENS):
        raise ValueError(f"vocab_size must be >= {len(alphabet) + len(SPECIAL_TOKENS)} for byte-level BPE")
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, initial_alphabet=alphabet, show_progress=False
    )
    tok.train_from_iterator(_corpus(), trainer=trainer)
    # The corpus may run out of merges; filler tokens make len(tokenizer) == vocab_size so the
    # model's embedding matrix and the tokenizer agree exactly (vLLM samples over the full vocab).
    missing = vocab_size - tok.get_vocab_size()
    if missing > 0:
        tok.add_tokens([f"<|filler_{i}|>" for i in range(missing)])
    fast = PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<|im_start|>",
        eos_token="<|im_end|>",
        pad_token="<|im_end|>",
        unk_token="<|endoftext|>",
        model_max_length=TINY_CONFIG["max_position_embeddings"],
    )
    fast.chat_template = CHATML_TEMPLATE
    assert len(fast) == vocab_size, (len(fast), vocab_size)
    return fast


def build_gemma_tokenizer(vocab_size: int = VOCAB_SIZES["gemma3"]):
    """A GemmaTokenizer (BPE over "▁"-joined words, byte fallback, digits split one by one, as in
    Gemma 3) with Gemma's special-token ids, the 256 byte tokens next, then the trained merges and
    `<unusedN>` fillers up to exactly vocab_size (as Gemma's vocabulary has them)."""
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, trainers
    from transformers import GemmaTokenizer

    fixed = GEMMA_SPECIAL_TOKENS + GEMMA_BYTE_TOKENS
    if vocab_size <= len(fixed):
        raise ValueError(f"vocab_size must be > {len(fixed)}: Gemma's special and byte tokens come first")
    tok = Tokenizer(models.BPE(unk_token="<unk>", byte_fallback=True))
    tok.normalizer = normalizers.Replace(" ", "▁")
    # Training only: merges stay inside a word and never join digits (GemmaTokenizer runs BPE on the
    # whole text, where no merge then crosses a word or joins two digits).
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [pre_tokenizers.Split("▁", behavior="merged_with_next"), pre_tokenizers.Digits(individual_digits=True)])
    trainer = trainers.BpeTrainer(vocab_size=vocab_size - len(GEMMA_BYTE_TOKENS), special_tokens=GEMMA_SPECIAL_TOKENS,
                                  show_progress=False)
    tok.train_from_iterator(_gemma_corpus(), trainer=trainer)
    trained = json.loads(tok.to_str())["model"]
    learned = [t for t, _ in sorted(trained["vocab"].items(), key=lambda kv: kv[1]) if t not in fixed]
    learned = learned[:vocab_size - len(fixed)]
    fillers = [f"<unused{i}>" for i in range(vocab_size - len(fixed) - len(learned))]
    vocab = {t: i for i, t in enumerate(fixed + learned + fillers)}
    merges = [tuple(m) if isinstance(m, list) else tuple(m.split(" ")) for m in trained["merges"]]
    merges = [m for m in merges if m[0] + m[1] in vocab]
    fast = GemmaTokenizer(vocab=vocab, merges=merges, add_bos_token=True,
                          model_max_length=TINY_GEMMA3_CONFIG["max_position_embeddings"])
    fast.chat_template = BASE_TEMPLATE
    assert len(fast) == vocab_size, (len(fast), vocab_size)
    return fast


def _tiny_config(vocab_size: int, kind: str, family: str):
    from transformers import Gemma3TextConfig, LlamaConfig

    extra = {"num_labels": 1} if kind == "reward" else {}
    if family == "gemma3":
        return Gemma3TextConfig(vocab_size=vocab_size, bos_token_id=2, eos_token_id=1, pad_token_id=0,
                                **TINY_GEMMA3_CONFIG, **extra)
    return LlamaConfig(
        vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY_CONFIG, **extra
    )


def _model_class(kind: str, family: str):
    from transformers import (Gemma3ForCausalLM, Gemma3TextForSequenceClassification, LlamaForCausalLM,
                              LlamaForSequenceClassification)

    return {("causal_lm", "llama"): LlamaForCausalLM, ("reward", "llama"): LlamaForSequenceClassification,
            ("causal_lm", "gemma3"): Gemma3ForCausalLM,
            ("reward", "gemma3"): Gemma3TextForSequenceClassification}[kind, family]


def build_tiny_model(out_dir: str, vocab_size: int | None = None, seed: int = 0, kind: str = "causal_lm",
                     family: str = "llama") -> str:
    """Write (once) and return a loadable HF folder in out_dir: <kind>-v<vocab>-s<seed> for the Llama,
    gemma3-<kind>-v<vocab>-s<seed> for the Gemma 3 (vocab_size defaults to the family's)."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    vocab_size = vocab_size or VOCAB_SIZES[family]
    prefix = "" if family == "llama" else f"{family}-"
    folder = os.path.join(out_dir, f"{prefix}{kind}-v{vocab_size}-s{seed}")

    def write(tmp: str) -> dict:
        import torch
        from transformers import GenerationConfig

        tokenizer = (build_gemma_tokenizer if family == "gemma3" else build_tokenizer)(vocab_size)
        config = _tiny_config(vocab_size, kind, family)
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
            torch.manual_seed(seed)
            model = _model_class(kind, family)(config).to(torch.float32)
        if kind == "causal_lm":
            model.generation_config = GenerationConfig(bos_token_id=config.bos_token_id, eos_token_id=config.eos_token_id,
                                                       pad_token_id=config.pad_token_id)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"kind": kind, "family": family, "vocab_size": vocab_size, "seed": seed}

    return export_atomically(folder, write)
