"""Judges of a comparison: who says which of two answers to a prompt is better.

A judge runs on actors of its own, started beside the run's (rlhf_ray.trainers.sidecar) and kept
for the run: ``RewardJudge`` scores each answer with a reward model (Reward actors), ``LLMJudge``
asks an LLM on rollout engines, in both orders, and reads its verdict from the next-token
distribution over the two labels. Each takes texts and tokenizes for its own model, so a judge
need not share the policy's tokenizer. Both return per-prompt preferences for the policy's answer;
the statistics over them are rlhf_ray.algos.judging's.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from rlhf_ray.algos.judging import pairwise_from_scores
from rlhf_ray.cluster.dispatch import map_balanced
from rlhf_ray.config import Config
from rlhf_ray.data.batch import split_list
from rlhf_ray.data.chat import prompt_text
from rlhf_ray.models.loading import load_tokenizer
from rlhf_ray.roles import Reward, Rollout
from rlhf_ray.trainers.sidecar import Sidecar


class RewardJudge:
    """Win = the reward model scores the policy's answer higher (a tie counts half)."""

    kind = "reward"

    def __init__(self, cfg: Config, model_path: str, run_id: str):
        self.sidecar = Sidecar.start(cfg, "reward", Reward, model_path, f"{run_id}-judge",
                                     reward=cfg.reward.model_copy(update={"kind": "model", "model_path": model_path}))

    def judge(self, rows: list[dict], policy: dict, baseline: dict) -> dict[str, torch.Tensor]:
        n = len(rows)
        scores = score_texts(self.sidecar.group, rows + rows, policy["texts"] + baseline["texts"], "judge reward scores",
                             policy["ended"] + baseline["ended"])
        return {"policy_score": scores[:n], "baseline_score": scores[n:],
                "preference": pairwise_from_scores(scores[:n], scores[n:])}

    def shutdown(self) -> None:
        self.sidecar.shutdown()


class LLMJudge:
    """Every pair judged twice, the policy's answer shown first (A) and second (B): position bias
    shows as disagreement between the two verdicts, and averaging them cancels it."""

    kind = "llm"

    def __init__(self, cfg: Config, model_path: str, run_id: str):
        ec = cfg.trainer.eval
        tokenizer = load_tokenizer(model_path)
        # The verdict is one token: the prompt may take the judge's whole context but that one.
        self.prompt = PairwisePrompt(tokenizer, ec.judge_template,
                                     min(ec.judge_max_prompt_tokens, context_length(model_path) - 1))
        self.choices = choice_ids(tokenizer, ec.judge_choices)
        self.sidecar = Sidecar.start(cfg, "rollout", Rollout, model_path, f"{run_id}-judge",
                                     max_prompt_tokens=self.prompt.limit, max_new_tokens=1)

    def judge(self, rows: list[dict], policy: dict, baseline: dict) -> dict[str, torch.Tensor]:
        questions = [prompt_text(r["prompt"]) for r in rows]  # a dialogue as Human:/Assistant: lines
        policy, baseline = policy["texts"], baseline["texts"]
        first = [self.prompt.ids(q, p, b) for q, p, b in zip(questions, policy, baseline)]
        second = [self.prompt.ids(q, b, p) for q, p, b in zip(questions, policy, baseline)]
        g = self.sidecar.group
        out = map_balanced(g.actors, first + second,
                           lambda e, start, chunk: e.choice_logprobs.remote(chunk, self.choices), ("choices",),
                           timeout_s=g.timeout)
        p_a = torch.tensor(out["choices"])[:, 0].exp()  # P(label A) among the two labels
        n = len(rows)
        policy_first, policy_second = p_a[:n], 1 - p_a[n:]
        return {"policy_first": policy_first, "policy_second": policy_second,
                "preference": (policy_first + policy_second) / 2}

    def shutdown(self) -> None:
        self.sidecar.shutdown()


class PairwisePrompt:
    """The judge's prompt for a question and two answers: ``template`` filled in, as a user turn of the
    judge's chat template (plain text without one), at most ``limit`` tokens."""

    def __init__(self, tokenizer, template: str, limit: int):
        self.tokenizer, self.template, self.limit = tokenizer, template, limit

    def ids(self, question: str, answer_a: str, answer_b: str) -> list[int]:
        """Two answers too long together are cut at the same length: the longest such that both fit (a
        short answer stays whole), so the cut favours neither position nor answer."""
        ids = self._render(question, answer_a, answer_b)
        if len(ids) <= self.limit:
            return ids
        a, b = (self.tokenizer(x, add_special_tokens=False)["input_ids"] for x in (answer_a, answer_b))
        budget = self.limit - len(self._render(question, "", ""))  # tokens the two answers may take
        short = min(len(a), len(b))
        keep = budget - short if 2 * short <= budget else budget // 2  # the longest cut where both fit
        while keep > 0:
            ids = self._render(question, self.tokenizer.decode(a[:keep]), self.tokenizer.decode(b[:keep]))
            if len(ids) <= self.limit:
                return ids
            keep -= max(1, len(ids) - self.limit)  # re-tokenized text can take a few tokens more
        raise ValueError(f"the judge prompt of question {question[:60]!r} does not fit {self.limit} tokens even "
                         f"with both answers cut: raise trainer.eval.judge_max_prompt_tokens")

    def _render(self, question: str, answer_a: str, answer_b: str) -> list[int]:
        text = self.template.format(question=question, answer_a=answer_a, answer_b=answer_b)
        if getattr(self.tokenizer, "chat_template", None):
            text = self.tokenizer.apply_chat_template([{"role": "user", "content": text}], tokenize=False,
                                                      add_generation_prompt=True)
        return self.tokenizer(text, add_special_tokens=False)["input_ids"]


def score_texts(group, rows: list[dict], texts: list[str], what: str, ended: list[bool]) -> torch.Tensor:
    """Reward actors' scores of ``texts`` (answers to ``rows``; ``ended``: which stopped by themselves),
    split evenly over the actors; each actor tokenizes them for its own model (Reward.score with no batch)."""
    n = group.size
    shards = zip(group.actors, split_list([r["prompt"] for r in rows], n), split_list(texts, n),
                 split_list([r.get("answer", "") for r in rows], n), split_list(ended, n))
    return group.gather_cat([a.score.remote(None, p, t, ans, e) for a, p, t, ans, e in shards], what)


def context_length(model_path: str) -> int:
    """The longest sequence the model at ``model_path`` takes (max_position_embeddings of its config)."""
    config = json.loads((Path(model_path) / "config.json").read_text())
    return int(config.get("max_position_embeddings") or config.get("text_config", {}).get("max_position_embeddings"))


def choice_ids(tokenizer, labels) -> list[int]:
    """The token of each label (trainer.eval.judge_choices): one token each, or an error naming the label."""
    out = []
    for text in labels:
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) != 1:
            raise ValueError(f"trainer.eval.judge_choices: {text!r} is {len(ids)} tokens of the judge's tokenizer {ids}; "
                             "each label must be one token")
        out += ids
    return out


def make_judge(cfg: Config, model_path: str, run_id: str) -> RewardJudge | LLMJudge:
    return (LLMJudge if cfg.trainer.eval.judge == "llm" else RewardJudge)(cfg, model_path, run_id)

