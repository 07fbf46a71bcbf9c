"""The reference: the frozen initial policy; it only scores log-probs for the KL penalty."""

from __future__ import annotations

import torch

from rlhf_ray.batch import Batch, map_micro_batches
from rlhf_ray.models.forward import response_logprobs
from rlhf_ray.roles.base import Worker


class Reference(Worker):
    role = "reference"

    def init_model(self, model_path: str) -> int:
        from rlhf_ray.models.loading import load_causal_lm

        from rlhf_ray.models.packing import use_packing

        self.model = load_causal_lm(model_path, torch.float32).to(self.device).eval()
        self.model.requires_grad_(False)
        self.pack = use_packing(self.model, self.cfg.model.sequence_packing, f"{self.role}-{self.rank}")
        return sum(p.numel() for p in self.model.parameters())

    @torch.no_grad()
    def compute_logprobs(self, batch: Batch) -> torch.Tensor:
        t = self.cfg.rollout.temperature
        micro = self.cfg.reference.micro_batch_samples_per_actor
        return map_micro_batches(batch, micro, lambda mb: response_logprobs(self.model, mb, t, pack=self.pack)[0],
                                 per_token=True, max_tokens=self.cfg.reference.micro_batch_tokens_per_actor)

    @torch.no_grad()
    def compute_sequence_logprobs(self, batch: Batch) -> torch.Tensor:
        """[B, 2]: each row's summed response log-prob (temperature 1) and response token count."""
        from rlhf_ray.models.forward import sequence_logprobs

        micro = self.cfg.reference.micro_batch_samples_per_actor
        return map_micro_batches(batch, micro, lambda mb: sequence_logprobs(self.model, mb, self.pack),
                                 per_token=False, max_tokens=self.cfg.reference.micro_batch_tokens_per_actor)
