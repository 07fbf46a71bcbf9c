"""RAFT (reward-ranked fine-tuning, Dong et al. 2023): rejection-sampling fine-tuning in rounds.

    for each round: sample n responses per prompt → reward scores → keep the best per prompt (or
    every sample above a threshold) → SFT on the learner → weight sync to the rollout engines → eval

No critic and no reference: the policy only ever imitates its own best samples. The SFT optimiser
step is ``offline.batch_samples_global`` samples (the learner's optimiser batch for every
dataset-style update); each round keeps a whole number of such steps of its selection.
A checkpoint (learner state, sampler, RNG, weights version, round) is written every
trainer.save_every rounds and after the last; trainer.resume continues at the next round.
"""

from __future__ import annotations

import time

import torch

from rlhf_ray.algos.masked import masked_mean
from rlhf_ray.config import RaftConfig
from rlhf_ray.data.batch import build_batch
from rlhf_ray.roles import PolicyLearner
from rlhf_ray.runs.tracking import StageTimer
from rlhf_ray.trainers.controller import mean_dicts
from rlhf_ray.trainers.estimate import group_metrics
from rlhf_ray.trainers.online import OnlineController


def select_samples(scores: torch.Tensor, group_size: int, raft: RaftConfig) -> list[int]:
    """Rows kept for SFT, ascending. Rows come in groups of ``group_size`` (one prompt each).

    best: the first highest-scoring sample of each prompt, if it reaches ``raft.threshold`` (when set);
    threshold: every sample scoring ≥ threshold, best first, at most ``raft.max_per_prompt`` per prompt."""
    groups = scores.reshape(-1, group_size).tolist()
    keep = []
    for p, group in enumerate(groups):
        ranked = sorted(range(group_size), key=lambda j: -group[j])  # stable: ties keep row order
        if raft.threshold is not None:
            ranked = [j for j in ranked if group[j] >= raft.threshold]
        limit = 1 if raft.selection == "best" else raft.max_per_prompt or group_size
        keep += sorted(p * group_size + j for j in ranked[:limit])
    return keep


def whole_steps(rows: list[int], step_samples: int, seed: int) -> list[int]:
    """A seeded random subset of ``rows`` holding a whole number of optimiser steps (possibly none):
    a partial step would leave gradients accumulated into the next round's first step."""
    usable = len(rows) // step_samples * step_samples
    if usable == len(rows):
        return rows
    pick = torch.randperm(len(rows), generator=torch.Generator().manual_seed(seed))[:usable]
    return sorted(rows[i] for i in pick.tolist())


class RaftTrainer(OnlineController):
    @property
    def total_steps(self) -> int:
        return self.cfg.raft.rounds  # a step is a round; trainer.save_every and eval_every count rounds

    def step(self, step: int) -> dict[str, float]:
        return self.round(step)

    def round(self, r: int) -> dict[str, float]:
        raft, timer = self.cfg.raft, StageTimer()
        start = time.perf_counter()
        with timer("generate"):
            rows = self.inputs.sample_rows(raft.prompts_per_round, raft.samples_per_prompt)
            gen, batch, scores = self.recovering(
                "generate", lambda: self.generate_and_score(self.train_set, rows, seed=r * 1_000_003))
        kept = whole_steps(select_samples(scores, raft.samples_per_prompt, raft), self.cfg.optimizer_batch_global,
                           seed=self.cfg.trainer.seed + r)
        metrics = {"reward/mean": float(scores.mean()), "raft/selected": float(len(kept)),
                   "raft/selected_frac": len(kept) / len(rows),
                   "response/length_mean": float(batch["response_lengths"].float().mean()),
                   **group_metrics(scores, raft.samples_per_prompt)}
        if kept:
            # Re-packed so the SFT batch is only as wide as the kept samples need.
            sft = build_batch([self.train_set.ids[rows[i]] for i in kept], [gen["response_ids"][i] for i in kept],
                              self.tokenizer.pad_token_id)
            metrics["raft/selected_score_mean"] = float(scores[kept].mean())
            with timer("update"):
                metrics["raft/selected_logprob_before"] = self._mean_logprob(sft)
                for _ in range(raft.sft_epochs):
                    metrics.update(mean_dicts(self.recovering("update", lambda: self.learner.get(
                        self.learner.map_batch(PolicyLearner.train_sft, sft), "SFT update"))))
                metrics["raft/selected_logprob_after"] = self._mean_logprob(sft)
            with timer("sync"):
                metrics.update(self.recovering("sync", lambda: self.sync_weights(r)))
        else:
            print(f"[raft] round {r}: fewer than offline.batch_samples_global={self.cfg.optimizer_batch_global} "
                  "samples selected; no update this round", flush=True)
        metrics.update(timer.seconds)
        metrics["time/step"] = time.perf_counter() - start
        return metrics

    def _mean_logprob(self, batch) -> float:
        """Learner's mean per-token log-prob of the batch's responses: SFT should raise it."""
        logp = self.learner.gather_cat(self.learner.map_batch(PolicyLearner.compute_logprobs, batch), "learner log-probs")
        return float(masked_mean(logp, batch["response_mask"]))

