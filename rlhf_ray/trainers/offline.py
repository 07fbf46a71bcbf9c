"""The offline controller: DPO and its kin (IPO, cDPO, SimPO, ORPO), KTO and SFT on a fixed dataset.

    tokenize the dataset → reference log-probs of every row (once, cached; or per batch)
    → each step: sample a batch of units → (reference log-probs) → one learner update → log
    held-out evaluation before, every offline.eval_every steps and at the end → save the policy
    a checkpoint every trainer.save_every steps and at the end; trainer.resume continues after one

Only the learner runs, and the reference for the losses measured against it: no rollout, critic
or reward. The controller holds no model; every stage is timed (``time/<stage>``).
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Callable

import torch

from rlhf_ray.algos.offline import kto_objective, pairwise_accuracy, preference_objective
from rlhf_ray.cluster.groups import WorkerGroup
from rlhf_ray.data import Encoded, Unit, collate
from rlhf_ray.data.batch import Batch, build_batch
from rlhf_ray.data.prompts import PromptSampler
from rlhf_ray.roles import PolicyLearner
from rlhf_ray.roles.reward_trainer import RewardTrainer
from rlhf_ray.runs.tracking import StageTimer
from rlhf_ray.trainers.controller import Controller, mean_dicts
from rlhf_ray.trainers.inputs import DataInputs


def score_units(group: WorkerGroup, method: Callable, units: list[Unit], pad_id: int, micro_rows: int,
                micro_per_call: int = 2) -> torch.Tensor:
    """``method`` (a batch → [rows, ...] call) over every row of ``units``, returned in unit order.

    Rows go in length-sorted chunks, so little compute is spent on padding; the last chunk is padded
    with repeats so every rank runs the same number of micro-batches (ZeRO-3 gathers collectively)."""
    rows = [(u.prompt, r) for u in units for r in u.responses]
    order = sorted(range(len(rows)), key=lambda i: (len(rows[i][0]) + len(rows[i][1]), i))
    per_call = group.size * micro_rows * micro_per_call
    out: list[torch.Tensor | None] = [None] * len(rows)
    for start in range(0, len(order), per_call):
        idx = order[start:start + per_call]
        padded = idx + [idx[-1]] * (per_call - len(idx))
        batch = build_batch([rows[i][0] for i in padded], [rows[i][1] for i in padded], pad_id)
        res = group.gather_cat(group.map_batch(method, batch), f"{group.role} {method.__name__}")
        for j, i in enumerate(idx):
            out[i] = res[j]
    return torch.stack(out)


def planned_units(n_units: int, seed: int, steps: int, batch: int) -> list[int]:
    """Every unit index a run of ``steps`` batches will draw (the same seeded sampler as the loop)."""
    plan = PromptSampler(n_units, seed)
    seen: set[int] = set()
    for _ in range(steps):
        seen.update(plan.next(batch))
        if len(seen) == n_units:
            break
    return sorted(seen)


class OfflineTrainer(Controller):
    inputs_type = DataInputs
    inputs: DataInputs

    def __init__(self, inputs: DataInputs):
        super().__init__(inputs)
        self.train, self.eval = inputs.train, inputs.eval
        self.ref_train: dict[int, torch.Tensor] | None = None  # unit index → its rows' reference log-probs
        self.ref_eval: torch.Tensor | None = None
        print(f"[data] train {self.train.describe()}" + (f"; eval {self.eval.describe()}" if self.eval else ""), flush=True)

    @property
    def total_steps(self) -> int:
        return self.inputs.total_steps

    @property
    def eval_every(self) -> int:
        return self.cfg.offline.eval_every

    def fit(self) -> dict:
        timer = StageTimer()
        with timer("reference"):  # the reference is frozen: score its rows once, before the loop
            if self.ref_source is not None and self.eval is not None:
                self.ref_eval = self.reference_scores(self.eval.units)
            if self.ref_source is not None and self.cfg.offline.reference_logprobs == "precompute":
                self.ref_train = self.precompute_reference()
        self.start_metrics.update(timer.seconds)
        return super().fit()

    def step(self, step: int) -> dict[str, float]:
        timer, start = StageTimer(), time.perf_counter()
        with timer("batch"):
            index = self.sampler.next(self.cfg.offline.batch_samples_global)
            batch = collate([self.train.units[i] for i in index], self.tokenizer.pad_token_id)
        if self.ref_source is not None:  # a reference actor that dies is restarted and asked again
            with timer("reference"):
                batch["ref_logps"] = self.recovering("reference", lambda: self.batch_reference(batch, index))
        with timer("update"):  # a lost learner rank: back to the last checkpoint (Controller.fit)
            update = UPDATES[self.spec.update]
            metrics = mean_dicts(self.recovering("update", lambda: self.trained.get(
                self.trained.map_batch(update, batch), f"{self.spec.update} update")))
        metrics.update(timer.seconds)
        metrics["time/step"] = time.perf_counter() - start
        metrics["throughput/tokens_per_s"] = float(batch["attention_mask"].sum()) / metrics["time/step"]
        metrics["data/epoch"] = self.sampler.epoch + self.sampler.position / len(self.train.units)
        return metrics

    # ------------------------------------------------------------------ stages
    def reference_scores(self, units: list[Unit]) -> torch.Tensor:
        """Summed reference log-prob of every row of ``units`` [rows]."""
        micro = self.cfg.reference.micro_batch_samples_per_actor
        return score_units(self.ref_source.group, self.ref_source.sequence_logprobs, units, self.tokenizer.pad_token_id,
                           micro)[:, 0]

    def batch_reference(self, batch: Batch, index: list[int]) -> torch.Tensor:
        """Reference log-probs of the batch's rows: from the cache, or from the reference actors."""
        if self.ref_train is None:
            ref = self.ref_source.group
            return ref.gather_cat(ref.map_batch(self.ref_source.sequence_logprobs, batch), "reference log-probs")[:, 0]
        return torch.cat([self.ref_train[i] for i in index])

    def precompute_reference(self) -> dict[int, torch.Tensor]:
        """Reference log-probs of the rows of every unit this run will train on, by unit index.

        The sampler is seeded, so the plan is known up front: a short run over a large dataset
        scores only what it visits, never more than one pass over the data."""
        oc = self.cfg.offline
        index = planned_units(len(self.train.units), self.cfg.trainer.seed, self.total_steps, oc.batch_samples_global)
        scores = self.reference_scores([self.train.units[i] for i in index])
        k = len(self.train.units[0].responses)
        return {u: scores[j * k:(j + 1) * k] for j, u in enumerate(index)}

    def policy_scores(self, units: list[Unit]) -> torch.Tensor:
        """[rows, 2] summed log-prob and token count of every row under the current policy."""
        micro = self.cfg.learner.micro_batch_samples_per_actor
        return score_units(self.trained, PolicyLearner.compute_sequence_logprobs, units, self.tokenizer.pad_token_id,
                           micro)

    def evaluate(self, step: int) -> dict[str, float]:
        if self.eval is None:
            return {}
        start = time.perf_counter()
        out = self.eval_metrics(self.eval)
        metrics = {f"eval/{k}": v for k, v in out.items()}
        metrics["time/eval"] = time.perf_counter() - start
        shown = ", ".join(f"{k} {v:.4f}" for k, v in out.items() if k in ("accuracy", "margin", "loss", "nll"))
        print(f"[eval] step {step}: {shown} on {len(self.eval.units)} held-out units ({metrics['time/eval']:.1f}s)",
              flush=True)
        return metrics

    def eval_metrics(self, data: Encoded) -> dict[str, float]:
        oc, update = self.cfg.offline, self.spec.update
        scores = self.policy_scores(data.units)
        logps, lengths = scores[:, 0], scores[:, 1]
        if update == "sft":
            return {"nll": float(-logps.sum() / lengths.sum())}
        if update == "unpaired":
            ref = self.ref_eval
            z0 = max(float((logps[1::2] - ref[1::2]).mean()), 0.0)
            labels = torch.tensor([float(u.label) for u in data.units])
            _, m = kto_objective(oc, logps[0::2], ref[0::2], labels, z0)
            paired = pairwise_accuracy(oc.beta * (logps[0::2] - ref[0::2]), labels, [u.pair_id for u in data.units])
            return {**m, "accuracy": m["accuracy"] if paired is None else paired}
        _, m = preference_objective(self.spec.objective, oc, logps, lengths, self.ref_eval)
        return m

    def summary(self, history: dict[int, dict[str, float]]) -> dict:
        summary = super().summary(history)
        summary["data"] = {"train": self.train.stats, "eval": self.eval.stats if self.eval else None}
        if self.cfg.offline.save_final:
            path = str((self.run_dir / "final").resolve())
            self.trained.get(self.export_hf(Path(path)), "save_hf")
            summary["final_model"] = path
            print(f"[save] {self.cfg.algorithm} model written to {path}", flush=True)
        return summary


# The trained role's call for each kind of offline update (the rows' ``update``; rlhf_ray.algorithms).
UPDATES = {"preference": PolicyLearner.train_preference, "unpaired": PolicyLearner.train_unpaired,
           "sft": PolicyLearner.train_sft, "reward": RewardTrainer.train_reward}
