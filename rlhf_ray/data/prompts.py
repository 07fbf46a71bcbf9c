"""Prompt sets for online training: chat-templated, tokenized and checked once, up front.

A prompt that does not fit ``model.max_prompt_tokens`` is an error naming its row, raised before
any actor starts. The sampler walks a seeded permutation epoch by epoch; its position is plain
state so a resumed run continues with the same prompts.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from rlhf_ray.config import Config
from rlhf_ray.data.chat import chat_texts
from rlhf_ray.data.files import read_table
from rlhf_ray.data.formats import hh_messages, split_hh
from rlhf_ray.envs.factory import make_environment
from rlhf_ray.envs.guess import guess_rows
from rlhf_ray.tasks.arithmetic import make_arithmetic_split


@dataclass
class PromptSet:
    rows: list[dict]  # {"prompt": question text, "answer": reference answer}
    texts: list[str]  # after the chat template
    ids: list[list[int]]


def encode_prompts(tokenizer, rows: list[dict], cfg: Config, source: str, where: list[str] | None = None,
                   system_prompt: str | None = None, drop_long: bool | None = None) -> PromptSet:
    """``where[i]`` names row i in errors (e.g. "train.jsonl.gz line 17"); default "<source> row i".
    ``system_prompt`` replaces task.system_prompt (an environment's tools are described there).
    ``drop_long``: leave out prompts over model.max_prompt_tokens (default: task.long_prompts=drop)
    rather than stop; a caller whose rows must stay aligned with another model's says False."""
    if not rows:
        raise ValueError(f"{source}: no prompts")
    where = where or [f"{source} row {i}" for i in range(len(rows))]
    for i, r in enumerate(rows):
        if not r.get("prompt"):
            raise ValueError(f"{where[i]}: missing or empty field 'prompt'")
    texts, ids = chat_prompt_ids(tokenizer, [r["prompt"] for r in rows], system_prompt or cfg.task.system_prompt,
                                 cfg.task.instruction)
    limit = cfg.model.max_prompt_tokens
    long = [i for i, x in enumerate(ids) if len(x) > limit]
    if long and (cfg.task.long_prompts == "drop" if drop_long is None else drop_long):
        print(f"[data] {source}: {len(long)} of {len(rows)} prompts over model.max_prompt_tokens={limit} left out "
              "(task.long_prompts=drop)", flush=True)
        keep = [i for i in range(len(rows)) if len(ids[i]) <= limit]
        if not keep:
            raise ValueError(f"{source}: every prompt is over model.max_prompt_tokens={limit}")
        return PromptSet([rows[i] for i in keep], [texts[i] for i in keep], [ids[i] for i in keep])
    if long:
        i = long[0]
        raise ValueError(f"{where[i]}: prompt is {len(ids[i])} tokens after the chat template, over "
                         f"model.max_prompt_tokens={limit}; raise the limit, shorten the prompt or set task.long_prompts=drop")
    return PromptSet(rows, texts, ids)


def chat_prompt_ids(tokenizer, questions: list[str], system_prompt: str | None,
                    instruction: str) -> tuple[list[str], list[list[int]]]:
    """(texts, ids) of questions as the policy reads them: the chat template (which adds any special
    tokens the model wants, such as Gemma's <bos>), then the tokens with none added."""
    texts = chat_texts(tokenizer, questions, system_prompt, instruction)
    return texts, [tokenizer(t, add_special_tokens=False)["input_ids"] for t in texts]


def load_task(cfg: Config, tokenizer) -> tuple[PromptSet, PromptSet]:
    """(train, held-out) prompt sets of ``cfg.task``: generated arithmetic or guessing games, or rows of
    GSM8K/JSONL files, under the run's system prompt (``run_system_prompt``)."""
    t, system = cfg.task, run_system_prompt(cfg)
    (train, train_where), (held_out, eval_where) = task_rows(cfg)
    return (encode_prompts(tokenizer, train, cfg, t.train_file or "task train", train_where, system),
            encode_prompts(tokenizer, held_out, cfg, t.eval_file or t.train_file or "task eval", eval_where, system))


def task_rows(cfg: Config) -> tuple[tuple[list[dict], list[str] | None], tuple[list[dict], list[str] | None]]:
    """((train rows, where), (held-out rows, where)) of ``cfg.task``, before the chat template; ``where``
    names each row of a file in errors (None for generated rows)."""
    t = cfg.task
    if t.name == "arithmetic":
        train, held_out = make_arithmetic_split(t.n_train, t.n_eval, seed=cfg.trainer.seed, max_operand=t.max_operand,
                                                min_operand=t.min_operand, ops=tuple(t.ops))
        return (train, None), (held_out, None)
    if t.name == "guess_number":
        # Secrets repeat between the sets (there are only max_operand of them): the skill is the search.
        return ((guess_rows(t.n_train, seed=cfg.trainer.seed, high=t.max_operand), None),
                (guess_rows(t.n_eval, seed=cfg.trainer.seed + 1_000_003, high=t.max_operand), None))
    return load_prompt_files(cfg)


def run_system_prompt(cfg: Config) -> str | None:
    """task.system_prompt, then the environment's (its tools' descriptions, or env.system_prompt). The
    environment is built here once: a wrong import path or argument fails before any actor starts."""
    env = None
    if cfg.env.enabled:
        env = cfg.env.system_prompt if cfg.env.system_prompt is not None else make_environment(cfg.env).system_prompt()
    return "\n\n".join(p for p in (cfg.task.system_prompt, env) if p) or None


def load_prompt_files(cfg: Config) -> tuple[tuple[list[dict], list[str]], tuple[list[dict], list[str]]]:
    """((train rows, where), (eval rows, where)) from task.train_file/eval_file; rows are
    {"prompt", "answer"}. Without an eval file the last n_eval rows of the train file are held out."""
    t = cfg.task
    parse = {"gsm8k": _gsm8k_row, "hh": _hh_row}.get(t.name, _jsonl_row)
    train = read_table(t.train_file)
    if t.eval_file:
        held_out = read_table(t.eval_file)
        held_out = held_out.subset(list(range(min(t.n_eval, len(held_out)))))
    else:
        if len(train) <= t.n_eval:
            raise ValueError(f"task.train_file {t.train_file} has {len(train)} rows: too few to hold out "
                             f"task.n_eval={t.n_eval} and train on the rest; set task.eval_file or lower task.n_eval")
        held_out = train.subset(list(range(len(train) - t.n_eval, len(train))))
        train = train.subset(list(range(len(train) - t.n_eval)))
    train = train.subset(list(range(min(t.n_train, len(train)))))
    return tuple(([parse(r, table.where(i)) for i, r in enumerate(table.rows)],
                  [table.where(i) for i in range(len(table))]) for table in (train, held_out))


def _text_field(row: dict, key: str, where: str, required: bool = True) -> str:
    value = row.get(key)
    if value is None and not required:
        return ""
    if not isinstance(value, str) or not value.strip():
        raise ValueError(f"{where}: field {key!r} must be a non-empty string, got {value!r:.60}")
    return value


def _gsm8k_row(row: dict, where: str) -> dict:
    """GSM8K keeps the worked solution in 'answer', the final number after '#### '."""
    answer = _text_field(row, "answer", where)
    if "####" not in answer:
        raise ValueError(f"{where}: field 'answer' has no '#### <final answer>' line")
    return {"prompt": _text_field(row, "question", where), "answer": answer.rsplit("####", 1)[1].strip()}


def _hh_row(row: dict, where: str) -> dict:
    """An HH-RLHF pair's dialogue up to its last 'Assistant:', as chat messages: the prompt both answers
    continue (rlhf_ray.data.formats.split_hh); no reference answer."""
    try:
        prefix = split_hh(_text_field(row, "chosen", where), _text_field(row, "rejected", where))[0]
        return {"prompt": hh_messages(prefix), "answer": ""}
    except ValueError as e:
        raise ValueError(f"{where}: not an HH-RLHF dialogue pair: {e}") from None


def _jsonl_row(row: dict, where: str) -> dict:
    answer = row.get("answer", "")
    if not isinstance(answer, (str, int, float)) or isinstance(answer, bool):
        raise ValueError(f"{where}: field 'answer' must be a string or a number, got {type(answer).__name__}")
    prompt = row.get("prompt")
    if isinstance(prompt, list):  # a dialogue: chat messages ending with the user's turn
        if not prompt or not all(isinstance(m, dict) and isinstance(m.get("content"), str) and m.get("role") in
                                 ("system", "user", "assistant") for m in prompt) or prompt[-1]["role"] != "user":
            raise ValueError(f"{where}: field 'prompt' as a list must be chat messages "
                             "({\"role\": ..., \"content\": ...}) ending with a user turn")
        return {"prompt": prompt, "answer": str(answer)}
    return {"prompt": _text_field(row, "prompt", where), "answer": str(answer)}


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
