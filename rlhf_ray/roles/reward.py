"""The reward: a rule-based function named by import path, a reward model scored at the last token, or a
remote reward service (rlhf_ray.rewards_http)."""

from __future__ import annotations

import importlib
import math
from typing import Callable

import torch

from rlhf_ray.batch import Batch
from rlhf_ray.models.forward import sequence_scores
from rlhf_ray.roles.base import Worker

RewardFn = Callable[[list[str], list[str], list[str]], list[float]]


def import_reward_function(path: str) -> RewardFn:
    """'package.module:function' → the function; errors name the path and what is wrong."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"reward.function={path!r} must look like 'package.module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"reward.function={path!r}: cannot import module {module_name!r} ({e})") from None
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"reward.function={path!r}: module {module_name!r} has no function {attr!r}")
    return fn


def check_scores(scores, n: int, source: str) -> torch.Tensor:
    """One finite number per sample, or an error that says which sample and what came back."""
    if len(scores) != n:
        raise ValueError(f"{source} returned {len(scores)} scores for {n} samples")
    out = torch.tensor([float(s) for s in scores], dtype=torch.float32)
    bad = [i for i, s in enumerate(out.tolist()) if not math.isfinite(s)]
    if bad:
        raise ValueError(f"{source} returned non-finite scores at samples {bad[:10]}: {out[bad[:10]].tolist()}")
    return out


class Reward(Worker):
    role = "reward"

    def init_model(self, model_path: str | None = None) -> int:
        rc = self.cfg.reward
        if rc.kind == "rule":
            self.fn = import_reward_function(rc.function)
            return 0
        if rc.kind == "http":
            from rlhf_ray.rewards_http import HttpRewardClient  # lazy: that module imports this one

            self.client = HttpRewardClient.from_config(rc)
            return 0
        from transformers import AutoModelForSequenceClassification

        from rlhf_ray.models.loading import check_model_folder

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
