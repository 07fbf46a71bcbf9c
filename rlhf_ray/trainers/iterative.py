"""Iterative DPO: rounds of synthesize → DPO on the same rollout, reward, learner and reference actors.

    for each round: sample n answers per prompt from the current policy (rollout engines) → reward
    scores → pairs, as ``rlhf-ray synthesize`` makes them (rlhf_ray.data.synthetic) → reference
    log-probs of both answers → DPO on the learner, iterative.epochs passes of optimiser steps of
    offline.batch_samples_global pairs → weight sync → held-out evaluation (with trainer.eval, judged
    against the reference: win rate by round)

Offline DPO trains on pairs some other policy wrote; here every round's pairs are the current
policy's own samples, ranked by the reward (Xiong et al. 2024, "Iterative Preference Learning from
Human Feedback"; Dong et al. 2024, "RLHF Workflow"). A round is a step: trainer.save_every and
trainer.eval.every count rounds, and a resumed run continues at the next round. Each round's pairs are
appended to <run_dir>/iterative_pairs.jsonl as they are made, so the generations outlive a failure
later in the run (a resumed run appends the rounds it redoes again, each row says its round).
"""

from __future__ import annotations

import json
import time

import torch

from rlhf_ray.data import Unit, collate
from rlhf_ray.data.candidates import append_lines
from rlhf_ray.data.synthetic import choose_pairs
from rlhf_ray.roles import PolicyLearner
from rlhf_ray.runs.tracking import StageTimer
from rlhf_ray.trainers.controller import mean_dicts
from rlhf_ray.trainers.estimate import group_metrics
from rlhf_ray.trainers.offline import score_units
from rlhf_ray.trainers.online import OnlineController
from rlhf_ray.trainers.raft import whole_steps


PAIRS_FILE = "iterative_pairs.jsonl"  # every round's pairs as text, in the run directory


class IterativeDPOTrainer(OnlineController):
    @property
    def total_steps(self) -> int:
        return self.cfg.iterative.rounds

    def step(self, r: int) -> dict[str, float]:
        it, k, timer = self.cfg.iterative, self.cfg.synthesize.samples_per_prompt, StageTimer()
        start = time.perf_counter()
        with timer("generate"):  # the policy's own answers, scored by the reward role
            rows = self.inputs.sample_rows(it.prompts_per_round, k)
            gen, batch, scores = self.recovering(
                "generate", lambda: self.generate_and_score(self.train_set, rows, seed=r * 1_000_003))
        units = self.round_pairs(r, rows, gen["response_ids"], scores)
        metrics = {"reward/mean": float(scores.mean()), "pairs/count": float(len(units)),
                   "pairs/per_prompt": len(units) / it.prompts_per_round,
                   "response/length_mean": float(batch["response_lengths"].float().mean()),
                   **group_metrics(scores, k)}
        if units:
            with timer("reference"):  # frozen: each pair's reference log-probs once per round
                ref = self.recovering("reference", lambda: score_units(
                    self.ref_source.group, self.ref_source.sequence_logprobs, units, self.tokenizer.pad_token_id,
                    self.cfg.reference.micro_batch_samples_per_actor)[:, 0])
            with timer("update"):
                metrics.update(self.train_pairs(r, units, ref))
            with timer("sync"):
                metrics.update(self.recovering("sync", lambda: self.sync_weights(r)))
        else:
            print(f"[iterative_dpo] round {r}: fewer than offline.batch_samples_global="
                  f"{self.cfg.offline.batch_samples_global} pairs; no update this round", flush=True)
        metrics.update(timer.seconds)
        metrics["time/step"] = time.perf_counter() - start
        return metrics

    def round_pairs(self, r: int, rows: list[int], responses: list[list[int]], scores: torch.Tensor) -> list[Unit]:
        """This round's (chosen, rejected) units, a whole number of optimiser steps of them (a partial
        step would carry accumulated gradients into the next round)."""
        sc, k = self.cfg.synthesize, self.cfg.synthesize.samples_per_prompt
        seed = self.cfg.trainer.seed + r
        pairs = choose_pairs(scores.reshape(-1, k), sc.pairing, sc.min_margin, seed)
        units = [Unit(self.train_set.ids[rows[p * k]], [responses[p * k + c], responses[p * k + j]], f"round {r} prompt {p}")
                 for p, c, j in pairs]
        keep = whole_steps(list(range(len(units))), self.cfg.offline.batch_samples_global, seed)
        self.record_pairs(r, rows, responses, scores, pairs)
        return [units[i] for i in keep]

    def record_pairs(self, r: int, rows: list[int], responses: list[list[int]], scores: torch.Tensor,
                     pairs: list[tuple[int, int, int]]) -> None:
        """The round's pairs as text, appended to <run_dir>/iterative_pairs.jsonl as soon as they are made (one
        write per round, on disk before the update): the generations outlive a failure later in the run."""
        k, flat = self.cfg.synthesize.samples_per_prompt, scores.reshape(-1).tolist()
        text = lambda i: self.tokenizer.decode(responses[i], skip_special_tokens=True)  # noqa: E731
        append_lines(self.run_dir / PAIRS_FILE, [json.dumps({
            "round": r, "prompt": self.train_set.rows[rows[p * k]]["prompt"], "chosen": text(p * k + c),
            "rejected": text(p * k + j), "chosen_score": flat[p * k + c], "rejected_score": flat[p * k + j]})
            for p, c, j in pairs])

    def train_pairs(self, r: int, units: list[Unit], ref: torch.Tensor) -> dict[str, float]:
        """iterative.epochs seeded passes of DPO steps over the round's units (``ref``: 2 rows each)."""
        size, steps = self.cfg.offline.batch_samples_global, []
        g = torch.Generator().manual_seed(self.cfg.trainer.seed * 7919 + r)
        for _ in range(self.cfg.iterative.epochs):
            order = torch.randperm(len(units), generator=g).tolist()
            for s in range(0, len(order), size):
                index = order[s:s + size]
                batch = collate([units[i] for i in index], self.tokenizer.pad_token_id)
                batch["ref_logps"] = torch.cat([ref[2 * i:2 * i + 2] for i in index])
                steps.append(mean_dicts(self.recovering("update", lambda: self.learner.get(
                    self.learner.map_batch(PolicyLearner.train_preference, batch), "DPO update"))))
        return mean_dicts(steps)
