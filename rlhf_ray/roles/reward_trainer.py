"""Reward-model training on the reward role's actors: a sequence classifier with one output,
trained with the Bradley-Terry loss on (chosen, rejected) pairs, one DeepSpeed rank per actor."""

from __future__ import annotations

import time

import torch

from rlhf_ray.algos import bradley_terry_loss
from rlhf_ray.data.batch import Batch
from rlhf_ray.models.forward import sequence_scores
from rlhf_ray.models.loading import check_model_folder, load_tokenizer
from rlhf_ray.roles.ds_worker import DeepSpeedWorker


class RewardTrainer(DeepSpeedWorker):
    role = "reward"
    lora_heads = ("score",)

    def init_model(self, model_path: str) -> int:
        """From a sequence-classification folder (``reward.model_path``), or from a causal LM with a
        fresh one-output score head (transformers warns that `score.weight` is newly initialised)."""
        from transformers import AutoConfig, AutoModelForSequenceClassification

        check_model_folder(model_path)
        config = AutoConfig.from_pretrained(model_path, num_labels=1)
        if config.pad_token_id is None:
            # HF pools at the last non-pad token and refuses batches without a pad id; we pool by
            # length (sequence_scores), but the saved config must still load and run elsewhere.
            config.pad_token_id = load_tokenizer(model_path).pad_token_id
        model = AutoModelForSequenceClassification.from_pretrained(model_path, config=config, dtype=torch.float32)
        self.check_packing(model, sequence_scores)
        self._initialize(model)
        return sum(p.numel() for p in self.module.parameters())

    def compute_scores(self, batch: Batch) -> torch.Tensor:
        """[B] scores at each row's last real token (no gradient)."""
        return self._forward_eval(batch, lambda mb: sequence_scores(self.module, mb, self.pack))

    def train_reward(self, batch: Batch) -> dict[str, float]:
        """One optimiser step of −log σ(r_chosen − r_rejected − margin) on adjacent (chosen, rejected) rows."""
        margin = self.cfg.offline.rm_margin

        def loss_fn(mb: Batch, norm):
            scores = sequence_scores(self.module, mb, self.pack)
            loss, metrics = bradley_terry_loss(scores[0::2], scores[1::2], margin or None, norm)
            own_mean, _ = bradley_terry_loss(scores[0::2].detach(), scores[1::2].detach(), margin or None)
            metrics.update(loss=own_mean.item(), score_chosen=scores[0::2].mean().item(),
                           score_rejected=scores[1::2].mean().item())
            return loss, metrics

        start = time.perf_counter()
        metrics = self._train_step(batch, loss_fn, rows_per_unit=2)
        metrics["compute_s"] = time.perf_counter() - start
        return {f"reward/{k}": v for k, v in metrics.items()}
