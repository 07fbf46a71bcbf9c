"""Reward-model training: the offline loop of rlhf_ray.trainers.offline on the reward role's actors.

    pairs → each step: one Bradley-Terry update on the reward actors → log
    held-out pairwise accuracy before, every offline.eval_every steps and at the end
    → an HF sequence-classification folder at <run_dir>/final, which PPO loads with
      reward.kind=model reward.model_path=<run_dir>/final

No reference or policy actors run. The model starts from ``reward.model_path`` (a reward model to
fine-tune) or, when empty, from the policy folder with a fresh score head.
"""

from __future__ import annotations

import torch

from rlhf_ray.algos import bradley_terry_loss
from rlhf_ray.data import Encoded
from rlhf_ray.roles.reward_trainer import RewardTrainer
from rlhf_ray.trainers.offline import OfflineTrainer, score_units


class RewardModelTrainer(OfflineTrainer):
    """The offline loop; the algorithm's row starts the reward role as a RewardTrainer."""

    def eval_metrics(self, data: Encoded) -> dict[str, float]:
        micro = self.cfg.reward.micro_batch_samples_per_actor
        scores = score_units(self.trained, RewardTrainer.compute_scores, data.units, self.tokenizer.pad_token_id, micro)
        chosen, rejected = scores[0::2], scores[1::2]
        loss, m = bradley_terry_loss(chosen, rejected, self.cfg.offline.rm_margin or None)
        return {"loss": loss.item(), **m, "score_chosen": chosen.mean().item(),
                "score_rejected": rejected.mean().item(), "score_std": torch.cat([chosen, rejected]).std().item()}

