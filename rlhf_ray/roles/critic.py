"""The critic: a value model trained with the clipped value loss, one DeepSpeed rank per actor."""

from __future__ import annotations

import time

import torch

from rlhf_ray.algos.objectives import value_objective
from rlhf_ray.data.batch import Batch
from rlhf_ray.models.forward import ValueModel, response_values
from rlhf_ray.roles.ds_worker import DeepSpeedWorker


class Critic(DeepSpeedWorker):
    role = "critic"
    lora_heads = ("value_head",)

    def init_model(self, model_path: str) -> int:
        model = ValueModel.from_pretrained(model_path)
        self.check_packing(model, response_values)
        self._initialize(model)
        return sum(p.numel() for p in self.module.parameters())

    def compute_values(self, batch: Batch) -> torch.Tensor:
        return self._forward_eval(batch, lambda mb: response_values(self.engine, mb, self.pack), per_token=True)

    def train_values(self, batch: Batch) -> dict[str, float]:
        """Value epochs on this rank's shard; needs old_values and returns."""
        ppo = self.cfg.ppo

        def loss_fn(mb: Batch, norm):
            return value_objective(ppo, response_values(self.engine, mb, self.pack), mb, norm)

        start = time.perf_counter()
        metrics = self._train_epochs(batch, loss_fn, ppo.epochs)
        metrics["compute_s"] = time.perf_counter() - start
        return {f"critic/{k}": v for k, v in metrics.items()}
