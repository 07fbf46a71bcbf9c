"""Prompt sets for online training: chat-templated, tokenized and checked once, up front.

A prompt that does not fit ``model.max_prompt_tokens`` is an error naming its row, raised before
any actor starts. The sampler walks a seeded permutation epoch by epoch; its position is plain
state so a resumed run continues with the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhf_ray.config import Config


@dataclass
class PromptSet:
    rows: list[dict]  # {"prompt": question text, "answer": reference answer}
    texts: list[str]  # after the chat template
    ids: list[list[int]]


def chat_texts(tokenizer, questions: list[str], system_prompt: str | None, instruction: str) -> list[str]:
    out = []
    for q in questions:
        messages = [{"role": "system", "content": system_prompt}] if system_prompt else []
        messages.append({"role": "user", "content": q + instruction})
        out.append(tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True))
    return out


def encode_prompts(tokenizer, rows: list[dict], cfg: Config, source: str) -> PromptSet:
    if not rows:
        raise ValueError(f"{source}: no prompts")
    for i, r in enumerate(rows):
        if not r.get("prompt"):
            raise ValueError(f"{source} row {i}: missing or empty field 'prompt'")
    texts = chat_texts(tokenizer, [r["prompt"] for r in rows], cfg.task.system_prompt, cfg.task.instruction)
    ids = [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]
    limit = cfg.model.max_prompt_tokens
    for i, x in enumerate(ids):
        if len(x) > limit:
            raise ValueError(f"{source} row {i}: prompt is {len(x)} tokens after the chat template, "
                             f"over model.max_prompt_tokens={limit}; raise the limit or shorten the prompt")
    return PromptSet(rows, texts, ids)


def load_task(cfg: Config, tokenizer) -> tuple[PromptSet, PromptSet]:
    from rlhf_ray.tasks.arithmetic import make_arithmetic_split

    t = cfg.task
    train, held_out = make_arithmetic_split(t.n_train, t.n_eval, seed=cfg.trainer.seed, max_operand=t.max_operand)
    return encode_prompts(tokenizer, train, cfg, "task train"), encode_prompts(tokenizer, held_out, cfg, "task eval")


@dataclass
class PromptSampler:
    """Seeded epoch-wise permutation; ``state_dict`` is everything needed to resume."""

    size: int
    seed: int
    epoch: int = 0
    position: int = 0
    _order: list[int] = field(default_factory=list, repr=False)

    def _permutation(self) -> list[int]:
        g = torch.Generator().manual_seed(self.seed * 100003 + self.epoch)
        return torch.randperm(self.size, generator=g).tolist()

    def next(self, n: int) -> list[int]:
        out = []
        while len(out) < n:
            if not self._order:
                self._order = self._permutation()
            if self.position >= self.size:
                self.epoch, self.position = self.epoch + 1, 0
                self._order = self._permutation()
            take = min(n - len(out), self.size - self.position)
            out += self._order[self.position:self.position + take]
            self.position += take
        return out

    def state_dict(self) -> dict:
        return {"epoch": self.epoch, "position": self.position}

    def load_state_dict(self, state: dict) -> None:
        self.epoch, self.position, self._order = state["epoch"], state["position"], []
