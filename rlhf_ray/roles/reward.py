"""The reward: a rule-based function named by import path, a reward model scored at the last token, or a
remote reward service (rlhf_ray.rewards_http)."""

from __future__ import annotations

import torch

from rlhf_ray.batch import Batch
from rlhf_ray.models.forward import sequence_scores
from rlhf_ray.models.loading import check_model_folder
from rlhf_ray.reward_functions import check_scores, import_reward_function
from rlhf_ray.rewards_http import HttpRewardClient
from rlhf_ray.roles.base import Worker


class Reward(Worker):
    role = "reward"

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
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def score(self, batch: Batch | None, prompts: list[str], responses: list[str], answers: list[str]) -> torch.Tensor:
        rc = self.cfg.reward
        if rc.kind == "rule":
            return check_scores(self.fn(prompts, responses, answers), len(responses), f"reward.function {rc.function}")
        if rc.kind == "http":  # the client has checked count and finiteness, naming the URL
            return torch.tensor(self.client.score(prompts, responses, answers), dtype=torch.float32)
        scores = self.map_forward(batch, lambda mb: sequence_scores(self.model, mb, self.pack))
        return check_scores(scores.tolist(), len(responses), "reward model")
