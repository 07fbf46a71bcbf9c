"""The offline controller: DPO and its kin (IPO, cDPO, SimPO, ORPO), KTO and SFT on a fixed dataset.

    tokenize the dataset → reference log-probs of every row (once, cached; or per batch)
    → each step: sample a batch of units → (reference log-probs) → one learner update → log
    held-out evaluation before, every offline.eval_every steps and at the end → save the policy
    a checkpoint every trainer.save_every steps and at the end; trainer.resume continues after one

Only the learner runs, and the reference for the losses measured against it: no rollout, critic
or reward. The controller holds no model; every stage is timed (``time/<stage>``).
"""

from __future__ import annotations

import json
import time

import torch
from tqdm import tqdm

from rlhf_ray.algos.offline import kto_objective, pairwise_accuracy, preference_objective
from rlhf_ray.batch import Batch, build_batch
from rlhf_ray.config import Config
from rlhf_ray.data import DataError, Encoded, Unit, collate, load_offline_data
from rlhf_ray.groups import WorkerGroup, shutdown_groups, start_groups
from rlhf_ray.prompts import PromptSampler
from rlhf_ray.tracking import StageTimer, Tracker
from rlhf_ray.trainers.session import fit_and_shut_down, init_ray, make_run_dir, resolve_model_path, run_id

TRAIN_CALL = {"sft": "train_sft", "kto": "train_kto", "reward_model": "train_reward"}  # others: train_preference
CONSOLE = [("learner/loss", "loss"), ("learner/sft_loss", "loss"), ("reward/loss", "loss"), ("learner/accuracy", "acc"),
           ("reward/accuracy", "acc"), ("learner/margin", "margin"),
           ("reward/margin", "margin"), ("eval/accuracy", "eval_acc"),
           ("eval/nll", "eval_nll"), ("time/step", "s")]


def score_units(group: WorkerGroup, method: str, units: list[Unit], pad_id: int, micro_rows: int,
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
        res = group.gather_cat(group.map_batch(method, batch), f"{group.role} {method}")
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


def mean_over_ranks(dicts: list[dict[str, float]]) -> dict[str, float]:
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in dicts[0]}


class OfflineTrainer:
    trained_role = "learner"

    def __init__(self, cfg: Config):
        from rlhf_ray.models.loading import load_tokenizer
        from rlhf_ray.placement import active_roles

        self.cfg, oc = cfg, cfg.offline
        # Everything that can be wrong with the input fails here, before any actor starts.
        if cfg.algorithm == "cdpo" and oc.label_smoothing == 0:
            raise ValueError("algorithm=cdpo needs offline.label_smoothing > 0 (e.g. 0.1); with 0 it is plain dpo")
        self.policy_path = resolve_model_path(cfg.model.path)
        self.start_path = self.model_path_of(self.trained_role)
        self.tokenizer = load_tokenizer(self.start_path)
        self.train, self.eval = load_offline_data(cfg, self.tokenizer)
        if len(self.train.units) < oc.batch_samples_global:
            raise DataError(f"{self.train.describe()}: fewer than offline.batch_samples_global={oc.batch_samples_global}")
        self.total_steps = oc.max_steps or oc.epochs * (len(self.train.units) // oc.batch_samples_global)
        self.sampler = PromptSampler(len(self.train.units), cfg.trainer.seed)
        self.run_dir = make_run_dir(cfg)
        self.roles = active_roles(cfg)
        init_ray(cfg, self.roles)
        self.groups = start_groups(cfg, self.role_classes(), run_id())
        try:
            self._load_models()
        except BaseException:
            shutdown_groups(self.groups)
            raise
        self.trainee, self.reference = self.groups[self.trained_role], self.groups.get("reference")
        self.tracker = Tracker(cfg, self.run_dir, run_name=self.run_dir.name)
        self.ref_train: dict[int, torch.Tensor] | None = None  # unit index → its rows' reference log-probs
        self.ref_eval: torch.Tensor | None = None
        print(f"[data] train {self.train.describe()}" + (f"; eval {self.eval.describe()}" if self.eval else ""), flush=True)

    def role_classes(self) -> dict[str, type]:
        from rlhf_ray.roles import PolicyLearner, Reference

        return {r: {"learner": PolicyLearner, "reference": Reference}[r] for r in self.roles}

    def model_path_of(self, role: str) -> str:
        return resolve_model_path(getattr(self.cfg, role).model_path or self.cfg.model.path)

    def _load_models(self) -> None:
        g = self.groups[self.trained_role]  # its data-parallel ranks meet at rank 0's address
        addr, port = g.get([g.actors[0].master_address.remote()])[0]
        g.get(g.call("setup_distributed", addr, port), f"{g.role} distributed setup")
        inits = {role: g.call("init_model", self.model_path_of(role)) for role, g in self.groups.items()}
        for role, refs in inits.items():
            self.groups[role].get(refs, f"{role} model load")

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        oc, tc, timer = self.cfg.offline, self.cfg.trainer, StageTimer()
        start, history = self.resume()
        with timer("reference"):  # the reference is frozen: score the held-out rows once, always
            if self.reference is not None and self.eval is not None:
                self.ref_eval = self.reference_scores(self.eval.units)
            if self.reference is not None and oc.reference_logprobs == "precompute":
                self.ref_train = self.precompute_reference()
        if start == 0:  # a resumed run logged (and evaluated) step 0 before its checkpoint
            history = {0: self.evaluate(0)} if self.eval else {}
            self.tracker.log(0, {**history.get(0, {}), **timer.seconds}, echo=None)
        bar = tqdm(range(start + 1, self.total_steps + 1), desc=self.cfg.algorithm, initial=start,
                   total=self.total_steps, disable=not self.cfg.logging.progress_bar)
        for step in bar:
            metrics = self.step(step)
            if self.eval and (step == self.total_steps or (oc.eval_every and step % oc.eval_every == 0)):
                history[step] = self.evaluate(step)
                metrics.update(history[step])
            self.tracker.log(step, metrics, echo=None)
            if step % self.cfg.logging.console_every == 0:
                bar.write(" | ".join([f"step {step}"] + [f"{s}={metrics[k]:.4g}" for k, s in CONSOLE if k in metrics]))
            if step == self.total_steps or (tc.save_every and step % tc.save_every == 0):
                self.save_checkpoint(step, history)
        self.tracker.close()
        return self.finish(history)

    def step(self, step: int) -> dict[str, float]:
        timer, start = StageTimer(), time.perf_counter()
        with timer("batch"):
            index = self.sampler.next(self.cfg.offline.batch_samples_global)
            batch = collate([self.train.units[i] for i in index], self.tokenizer.pad_token_id)
        if self.reference is not None:
            with timer("reference"):
                batch["ref_logps"] = self.batch_reference(batch, index)
        with timer("update"):
            call = TRAIN_CALL.get(self.cfg.algorithm, "train_preference")
            metrics = mean_over_ranks(self.trainee.get(self.trainee.map_batch(call, batch), f"{call} update"))
        metrics.update(timer.seconds)
        metrics["time/step"] = time.perf_counter() - start
        metrics["throughput/tokens_per_s"] = float(batch["attention_mask"].sum()) / metrics["time/step"]
        metrics["data/epoch"] = self.sampler.epoch + self.sampler.position / len(self.train.units)
        return metrics

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, history: dict[int, dict[str, float]]) -> str:
        """The trained group's DeepSpeed states (+ an HF export) and the controller's state, written
        whole or not at all (rlhf_ray.checkpoint). The held-out metrics so far go along, so a resumed
        run's summary.json still holds every evaluation."""
        from rlhf_ray.checkpoint import CheckpointManager, rng_state
        from rlhf_ray.config import save_config

        g, tc = self.trainee, self.cfg.trainer
        manager = CheckpointManager(self.run_dir, tc.keep_last)
        tmp = manager.begin(step)
        g.get(g.call("save_state", str(tmp / g.role)), f"checkpoint ({g.role})")
        if tc.save_hf:
            g.get(g.call("save_hf", str(tmp / self.hf_export), self.start_path), f"checkpoint ({self.hf_export})")
        save_config(self.cfg, tmp / "config.yaml")
        state = {"step": step, "sampler": self.sampler.state_dict(), "rng": rng_state(), "eval": history}
        return str(manager.commit(tmp, state))

    @property
    def hf_export(self) -> str:
        """A trained reward model is no policy: its export is named for its role."""
        return "policy_hf" if self.trained_role == "learner" else f"{self.trained_role}_hf"

    def resume(self) -> tuple[int, dict[int, dict[str, float]]]:
        """(step to continue after, held-out metrics so far): (0, {}) for a fresh run. The reference
        log-prob cache is not saved: it is recomputed, and comes out the same (frozen weights)."""
        from rlhf_ray.checkpoint import read_controller_state, resolve_resume, set_rng_state
        from rlhf_ray.trainers.online import _truncate_metrics

        path = resolve_resume(self.cfg.trainer.resume, self.run_dir)
        if path is None:
            return 0, {}
        state, g = read_controller_state(path), self.trainee
        g.get(g.call("load_state", str(path / g.role)), f"restore ({g.role})")
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        _truncate_metrics(self.run_dir / "metrics.jsonl", state["step"])
        print(f"[resume] from {path} at step {state['step']}", flush=True)
        return state["step"], {int(s): m for s, m in state["eval"].items()}  # JSON made the steps strings

    # ------------------------------------------------------------------ stages
    def reference_scores(self, units: list[Unit]) -> torch.Tensor:
        """Summed reference log-prob of every row of ``units`` [rows]."""
        micro = self.cfg.reference.micro_batch_samples_per_actor
        return score_units(self.reference, "compute_sequence_logprobs", units, self.tokenizer.pad_token_id, micro)[:, 0]

    def batch_reference(self, batch: Batch, index: list[int]) -> torch.Tensor:
        """Reference log-probs of the batch's rows: from the cache, or from the reference actors."""
        if self.ref_train is None:
            return self.reference.gather_cat(self.reference.map_batch("compute_sequence_logprobs", batch),
                                             "reference log-probs")[:, 0]
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
        return score_units(self.trainee, "compute_sequence_logprobs", units, self.tokenizer.pad_token_id, micro)

    def evaluate(self, step: int) -> dict[str, float]:
        start = time.perf_counter()
        out = self.eval_metrics(self.eval)
        metrics = {f"eval/{k}": v for k, v in out.items()}
        metrics["time/eval"] = time.perf_counter() - start
        shown = ", ".join(f"{k} {v:.4f}" for k, v in out.items() if k in ("accuracy", "margin", "loss", "nll"))
        print(f"[eval] step {step}: {shown} on {len(self.eval.units)} held-out units ({metrics['time/eval']:.1f}s)",
              flush=True)
        return metrics

    def eval_metrics(self, data: Encoded) -> dict[str, float]:
        oc, algo = self.cfg.offline, self.cfg.algorithm
        scores = self.policy_scores(data.units)
        logps, lengths = scores[:, 0], scores[:, 1]
        if algo == "sft":
            return {"nll": float(-logps.sum() / lengths.sum())}
        if algo == "kto":
            ref = self.ref_eval
            z0 = max(float((logps[1::2] - ref[1::2]).mean()), 0.0)
            labels = torch.tensor([float(u.label) for u in data.units])
            _, m = kto_objective(oc, logps[0::2], ref[0::2], labels, z0)
            paired = pairwise_accuracy(oc.beta * (logps[0::2] - ref[0::2]), labels, [u.pair_id for u in data.units])
            return {**m, "accuracy": m["accuracy"] if paired is None else paired}
        _, m = preference_objective(algo, oc, logps, lengths, self.ref_eval)
        return m

    def finish(self, history: dict[int, dict[str, float]]) -> dict:
        from rlhf_ray.report import write_report

        summary = {"eval": {s: {k: v for k, v in m.items() if k.startswith("eval/")} for s, m in history.items()},
                   "data": {"train": self.train.stats, "eval": self.eval.stats if self.eval else None},
                   "steps": self.total_steps}
        if self.cfg.offline.save_final:
            path = str((self.run_dir / "final").resolve())
            self.trainee.get(self.trainee.call("save_hf", path, self.start_path), "save_hf")
            summary["final_model"] = path
            print(f"[save] {self.cfg.algorithm} model written to {path}", flush=True)
        write_report(self.run_dir)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def shutdown(self) -> None:
        shutdown_groups(self.groups)


def run(cfg: Config) -> dict:
    return fit_and_shut_down(OfflineTrainer(cfg))
