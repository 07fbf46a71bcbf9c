"""The reference: the frozen initial policy; it only scores log-probs for the KL penalty."""

from __future__ import annotations

import torch

from rlhf_ray.data.batch import Batch
from rlhf_ray.models.forward import response_logprobs, sequence_logprobs
from rlhf_ray.models.loading import load_causal_lm
from rlhf_ray.roles.base import Worker


class Reference(Worker):
    role = "reference"

    def init_model(self, model_path: str) -> int:
        self.model = load_causal_lm(model_path, torch.float32).to(self.device).eval()
        self.model.requires_grad_(False)
        self.check_packing(self.model)
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def compute_logprobs(self, batch: Batch) -> torch.Tensor:
        t = self.cfg.rollout.temperature
        return self.map_forward(batch, lambda mb: response_logprobs(self.model, mb, t, pack=self.pack)[0], per_token=True)

    @torch.no_grad()
    def compute_sequence_logprobs(self, batch: Batch) -> torch.Tensor:
        """[B, 2]: each row's summed response log-prob (temperature 1) and response token count."""
        return self.map_forward(batch, lambda mb: sequence_logprobs(self.model, mb, self.pack))
