"""Tiny random Llama models with a locally trained tokenizer, for tests.

Nothing here touches the hub: the tokenizer is a byte-level BPE trained on a small built-in
corpus, so any text (prompts, sampled garbage) round-trips. Special tokens and ids mirror
SmolLM2 (<|endoftext|>=0, <|im_start|>=1, <|im_end|>=2, eos == pad) so code that works on
the tiny model meets the same conventions on the real one.
"""
from __future__ import annotations

import os

from .prepare import export_atomically

SPECIAL_TOKENS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>"]
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
KINDS = ("causal_lm", "reward")
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


def build_tokenizer(vocab_size: int = 512):
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


def _tiny_config(vocab_size: int, kind: str):
    from transformers import LlamaConfig

    extra = {"num_labels": 1} if kind == "reward" else {}
    return LlamaConfig(
        vocab_size=vocab_size, bos_token_id=1, eos_token_id=2, pad_token_id=2, **TINY_CONFIG, **extra
    )


def build_tiny_model(out_dir: str, vocab_size: int = 512, seed: int = 0, kind: str = "causal_lm") -> str:
    """Write (once) and return out_dir/<kind>-v<vocab>-s<seed>, a loadable HF folder."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    folder = os.path.join(out_dir, f"{kind}-v{vocab_size}-s{seed}")

    def write(tmp: str) -> dict:
        import torch
        from transformers import GenerationConfig, LlamaForCausalLM, LlamaForSequenceClassification

        tokenizer = build_tokenizer(vocab_size)
        config = _tiny_config(vocab_size, kind)
        cls = LlamaForSequenceClassification if kind == "reward" else LlamaForCausalLM
        with torch.random.fork_rng(devices=[]):  # leave the caller's RNG untouched
            torch.manual_seed(seed)
            model = cls(config).to(torch.float32)
        if kind == "causal_lm":
            model.generation_config = GenerationConfig(bos_token_id=1, eos_token_id=2, pad_token_id=2)
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        return {"kind": kind, "vocab_size": vocab_size, "seed": seed}

    return export_atomically(folder, write)
