"""The reward: a rule-based function named by import path, a reward model scored at the last token, or a
remote reward service (rlhf_ray.rewards.client).

A reward model reads the policy's token ids as they come in the batch when it shares the policy's
tokenizer (rlhf_ray.models.tokenizer_match), which every reward model rlhf_ray trains from the
policy does. One with another tokenizer gets the texts instead, tokenized its own way
(`RewardTexts`); so does a caller that has texts only (``score(None, ...)``).
"""

from __future__ import annotations

import logging

import torch

from rlhf_ray.config import Config
from rlhf_ray.data.batch import Batch, build_batch
from rlhf_ray.data.preference import Encoder
from rlhf_ray.data.prompts import chat_prompt_ids, run_system_prompt
from rlhf_ray.models.forward import sequence_scores
from rlhf_ray.models.loading import check_model_folder, load_tokenizer, resolve_model_path
from rlhf_ray.models.tokenizer_match import tokenizer_differences
from rlhf_ray.rewards.client import HttpRewardClient
from rlhf_ray.rewards.functions import check_scores, import_reward_function
from rlhf_ray.roles.base import Worker


class RewardTexts:
    """(prompt, response) texts → a batch in a reward model's own tokens, in the format rlhf_ray
    trains reward models on: the prompt row through the chat template as the policy's prompts are
    (rlhf_ray.data.prompts: the run's system prompt and task.instruction), the response as the offline
    reward-model data encodes it (rlhf_ray.data.preference.Encoder: its text, then the EOS token if it
    ended by itself; a response cut at the length limit gets none, as a cut training response)."""

    def __init__(self, tokenizer, cfg: Config):
        self.tokenizer = tokenizer
        self.system_prompt, self.instruction = run_system_prompt(cfg), cfg.task.instruction
        self.encoder = Encoder(tokenizer, cfg.offline)

    def batch(self, prompts: list[str], responses: list[str], ended: list[bool] | None = None) -> Batch:
        """``ended[i]``: response i stopped by itself (default: every one did)."""
        _, prompt_ids = chat_prompt_ids(self.tokenizer, prompts, self.system_prompt, self.instruction)
        ids = [self.encoder.response_ids(r) for r in responses]
        if ended is not None:  # a cut response without its EOS; an empty one keeps it (a score needs a token)
            ids = [r if e or len(r) == 1 else r[:-1] for r, e in zip(ids, ended)]
        return build_batch(prompt_ids, ids, self.tokenizer.pad_token_id)


class Reward(Worker):
    role = "reward"
    own_tokens = False  # a reward model scores re-tokenized texts, not the policy's ids (see init_model)

    def init_model(self, model_path: str | None = None) -> int:
        rc = self.cfg.reward
        if rc.kind == "rule":
            self.fn = import_reward_function(rc.function)
            return 0
        if rc.kind == "http":
            self.client = HttpRewardClient.from_config(rc)
            return 0
        from transformers import AutoModelForSequenceClassification

        check_model_folder(model_path)
        self.model = AutoModelForSequenceClassification.from_pretrained(model_path, dtype=torch.float32)
        self.model.to(self.device).eval().requires_grad_(False)
        self.check_packing(self.model, sequence_scores)
        tokenizer = load_tokenizer(model_path)
        self.texts = RewardTexts(tokenizer, self.cfg)
        policy = resolve_model_path(self.cfg.learner.model_path or self.cfg.model.path)
        differences = tokenizer_differences(tokenizer, load_tokenizer(policy))
        if differences and self.cfg.env.enabled:
            # A trajectory's text is its last turn only; its tokens (every turn and observation) are the policy's.
            raise ValueError(f"reward.model_path={model_path}: its tokenizer differs from the policy's ({'; '.join(differences)}), "
                             "and with env.* a reward model scores whole trajectories in the policy's tokens; use a reward "
                             "model on the policy's tokenizer, or reward.kind=env")
        if differences:
            self.own_tokens = True
            logging.getLogger(__name__).warning(
                "reward-%d: the reward model's tokenizer (%s) differs from the policy's (%s) in: %s. It scores the "
                "texts, tokenized its own way.", self.rank, model_path, policy, "; ".join(differences))
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def score(self, batch: Batch | None, prompts: list[str], responses: list[str], answers: list[str],
              ended: list[bool] | None = None) -> torch.Tensor:
        """One score per response. ``prompts`` are the prompt rows' texts (before the chat template) and
        ``responses`` the decoded responses; ``batch`` holds the same samples in the policy's tokens, or
        is None from a caller that has texts only, which says in ``ended`` which responses stopped by
        themselves rather than at the length limit (default: all)."""
        rc = self.cfg.reward
        if rc.kind == "rule":
            return check_scores(self.fn(prompts, responses, answers), len(responses), f"reward.function {rc.function}")
        if rc.kind == "http":  # the client has checked count and finiteness, naming the URL
            return torch.tensor(self.client.score(prompts, responses, answers), dtype=torch.float32)
        if batch is None or self.own_tokens:
            batch = self.texts.batch(prompts, responses, ended)
        scores = self.map_forward(batch, lambda mb: sequence_scores(self.model, mb, self.pack))
        return check_scores(scores.tolist(), len(responses), "reward model")
