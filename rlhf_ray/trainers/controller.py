"""The controller base: what every algorithm's loop shares, written once.

    inputs (rlhf_ray.trainers.inputs) → preflight (rlhf_ray.planning.preflight) → run directory claimed
    (rlhf_ray.runs.rundir) → Ray, placement groups, actors, models → fit:
        resume or evaluate step 0 → for each step: step() → NaN/Inf guard → evaluate on cadence
        → log → checkpoint on cadence;  a lost learner/critic rank → back to the last checkpoint;
        a lost rollout/reward/reference actor → started again, or (its node gone, none to take it) dropped
    → summary.json, report → actors and placement groups gone however the loop ended

A loop (online, offline, RAFT, reward model) extends Controller with its own ``step``, ``evaluate``
and length, and with the state beside the models that its checkpoints must carry (``extra_state``).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import ray
from tqdm import tqdm

from rlhf_ray.cluster.groups import WorkerGroup, shutdown_groups, start_groups
from rlhf_ray.config.loading import save_config
from rlhf_ray.planning.preflight import preflight
from rlhf_ray.roles import Critic, EnvHost, PolicyLearner, Reference, Reward, Rollout
from rlhf_ray.roles.ds_worker import DeepSpeedWorker
from rlhf_ray.roles.reward_trainer import RewardTrainer
from rlhf_ray.runs.checkpoint import CheckpointManager, read_controller_state, rng_state, set_rng_state
from rlhf_ray.runs.report import write_report
from rlhf_ray.runs.rundir import claim_run_dir, release_run_dir
from rlhf_ray.runs.tracking import Tracker
from rlhf_ray.trainers.inputs import RunInputs
from rlhf_ray.trainers.session import init_ray, run_id

ROLE_CLASSES = {"rollout": Rollout, "learner": PolicyLearner, "critic": Critic, "reference": Reference, "reward": Reward,
                "env": EnvHost}
FINITE_CHECKED = ("reward", "kl", "learner", "critic", "advantages", "returns")  # metric prefixes a NaN must not pass


class TrainableLost(RuntimeError):
    """A rank of a DeepSpeed-trained group died. ``ranks``: role → dead ranks."""

    def __init__(self, ranks: dict[str, list[int]], stage: str):
        self.ranks = ranks
        super().__init__(f"{stage}: " + ", ".join(f"{role} ranks {d} died" for role, d in ranks.items()))


@dataclass(frozen=True)
class ReferenceSource:
    """Where reference log-probs come from (reference.source): the reference actors, or the learner
    itself with its LoRA adapters disabled (no reference actors, no second copy of the model)."""

    group: WorkerGroup
    token_logprobs: Callable  # [B, R] per response token (online)
    sequence_logprobs: Callable  # [B, 2] summed response log-prob and token count (offline)

    @classmethod
    def of(cls, cfg, groups: dict[str, WorkerGroup]) -> "ReferenceSource | None":
        if cfg.reference.source == "learner_base" and "learner" in groups:
            return cls(groups["learner"], PolicyLearner.compute_base_logprobs,
                       PolicyLearner.compute_base_sequence_logprobs)
        if "reference" in groups:
            return cls(groups["reference"], Reference.compute_logprobs, Reference.compute_sequence_logprobs)
        return None


class ResourcesLost(RuntimeError):
    """Actors lost with their node cannot be placed again: the run stops, saying what is missing."""


class Controller:
    """Starts the algorithm's roles as Ray actor groups (``self.rollout``, ``self.learner``, ...;
    None when the algorithm does not start them) and runs ``fit``."""

    inputs_type: type[RunInputs] = RunInputs

    def __init__(self, inputs: RunInputs, roles: tuple[str, ...] | None = None):
        self.inputs, self.cfg = inputs, inputs.cfg
        self.spec, self.tokenizer, self.sampler = self.cfg.spec, inputs.tokenizer, inputs.sampler
        self.roles = roles or self.cfg.roles  # a command (best-of-n) may start fewer than its algorithm
        # Every input checked while nothing is started yet; trainer.resume resolved once, here.
        self.checked = preflight(self.cfg, inputs.model_paths, inputs.sample_row(), self.roles)
        self.run_dir = Path(self.cfg.trainer.run_dir)
        # The run directory's run id (run.json), kept across resumes: the checkpoints this run may prune carry it.
        self.lineage = claim_run_dir(self.cfg, self.checked.resume_from)
        self.version = 0  # of the weights the rollout engines serve (the step that produced them)
        self.restarts = 0
        self.last_checkpoint: str | None = None
        self.start_metrics: dict[str, float] = {}  # logged with step 0 (set-up stages a loop times)
        self.groups: dict[str, WorkerGroup] = {}
        try:
            init_ray(self.cfg)
            self.run_id = run_id()
            self.groups = start_groups(self.cfg, self.role_classes(), self.run_id)
            self.load_models(list(self.groups))
        except BaseException:
            # No half-started run keeps its actors, placement groups or run directory (the base's
            # shutdown: a subclass's own parts are not built yet).
            Controller.shutdown(self)
            raise
        for role in ROLE_CLASSES:
            setattr(self, role, self.groups.get(role))
        self.trainable = [r for r, g in self.groups.items() if issubclass(g.worker_cls, DeepSpeedWorker)]
        self.trained = self.groups.get(self.spec.trained_role)
        self.ref_source = ReferenceSource.of(self.cfg, self.groups) if "reference" in self.spec.roles else None
        self.tracker = Tracker(self.cfg, self.run_dir, run_name=self.run_id)

    @classmethod
    def from_config(cls, cfg) -> "Controller":
        return cls(cls.inputs_type.load(cfg))

    def role_classes(self) -> dict[str, type]:
        classes = {r: ROLE_CLASSES[r] for r in self.roles}
        if self.spec.trained_role == "reward" and "reward" in classes:
            classes["reward"] = RewardTrainer
        return classes

    def load_models(self, roles: list[str]) -> None:
        """DeepSpeed groups' ranks meet at rank 0's address first; then every role loads its model."""
        for role in roles:
            g = self.groups[role]
            if issubclass(g.worker_cls, DeepSpeedWorker):
                addr, port = g.get([g.actors[0].master_address.remote()])[0]
                g.get(g.call(DeepSpeedWorker.setup_distributed, addr, port), f"{role} distributed setup")
        inits = {role: self.groups[role].call(self.groups[role].worker_cls.init_model, self.inputs.model_paths[role])
                 for role in roles}
        for role, refs in inits.items():
            self.groups[role].get(refs, f"{role} model load")

    # ------------------------------------------------------------------ what each loop defines
    @property
    def total_steps(self) -> int:
        raise NotImplementedError

    @property
    def eval_every(self) -> int:
        return self.cfg.trainer.eval_every

    def evaluates_at(self, step: int) -> bool:
        """Whether step ``step`` (≥ 1) ends with a held-out evaluation: the last, and every eval_every."""
        return step == self.total_steps or bool(self.eval_every) and step % self.eval_every == 0

    def step(self, step: int) -> dict[str, float]:
        raise NotImplementedError

    def evaluate(self, step: int) -> dict[str, float]:
        """Held-out metrics (``eval/...``); empty when the run has nothing to evaluate on."""
        raise NotImplementedError

    def extra_state(self) -> dict:
        """Controller state a checkpoint carries beside the sampler, RNG and weights version."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        total = self.total_steps
        start, history = self.resume()
        if start == 0:
            self.initial_state = self.controller_state(0, {})
            history = {0: self.evaluate(0)}
            self.tracker.log(0, {**history[0], **self.start_metrics}, echo=None)
        bar = tqdm(total=total, initial=start, desc=self.cfg.algorithm, disable=not self.cfg.logging.progress_bar)
        step = start + 1
        while step <= total:
            try:
                metrics = self.step(step)
            except TrainableLost as lost:  # back to the last checkpoint, with a fresh group
                state = self.restore_trainables(lost)
                step = state["step"] + 1
                history = {s: m for s, m in history.items() if s <= state["step"]}
                bar.n = state["step"]
                continue
            check_finite(metrics, step, self.last_checkpoint)
            if self.evaluates_at(step):
                history[step] = self.evaluate(step)
                metrics.update(history[step])
            self.tracker.log(step, metrics, echo=bar.write)
            bar.update()
            if step == total or (self.cfg.trainer.save_every and step % self.cfg.trainer.save_every == 0):
                self.last_checkpoint = self.save_checkpoint(step, history)
            step += 1
        bar.close()
        self.tracker.close()
        return self.finish(history)

    def finish(self, history: dict[int, dict[str, float]]) -> dict:
        """End of a run: report plots, and summary.json with the held-out metrics per step."""
        summary = self.summary(history)
        write_report(self.run_dir)
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def summary(self, history: dict[int, dict[str, float]]) -> dict:
        return {"eval": {s: {k: v for k, v in m.items() if k.startswith("eval/")} for s, m in history.items() if m},
                "steps": self.total_steps}

    def shutdown(self) -> None:
        shutdown_groups(self.groups)
        release_run_dir(self.run_dir)

    # ------------------------------------------------------------------ checkpoints
    def controller_state(self, step: int, history: dict) -> dict:
        return {"step": step, "version": self.version, "sampler": self.sampler.state_dict(), "rng": rng_state(),
                "eval": history, "models": self.checked.models, **self.extra_state()}

    def save_checkpoint(self, step: int, history: dict[int, dict[str, float]]) -> str:
        """Every trainable group saves its ranks' states (and the trained role an HF export) into a
        temporary folder, the controller adds its own state, and the folder is renamed only when
        whole (rlhf_ray.runs.checkpoint). The held-out metrics so far go along for the summary."""
        manager = CheckpointManager(self.run_dir, self.cfg.trainer.keep_last, self.lineage)
        tmp = manager.begin(step)
        refs = [(self.groups[r], self.groups[r].call(DeepSpeedWorker.save_state, str(tmp / r))) for r in self.trainable]
        if self.cfg.trainer.save_hf:
            refs.append((self.trained, self.export_hf(tmp / self.hf_export)))
        for group, r in refs:
            group.get(r, f"checkpoint ({group.role})")
        save_config(self.cfg, tmp / "config.yaml")
        return str(manager.commit(tmp, self.controller_state(step, history)))

    def export_hf(self, path: Path) -> list:
        """The trained role writes its model as an HF folder at ``path``; a LoRA-trained one the adapters
        merged in, and a LoRA policy also the adapter alone as a PEFT folder beside it (``<name>_adapter``,
        ``_hf`` dropped). A reward model's score head trains in full: only its merged folder is whole."""
        lora = self.spec.trained_role == "learner" and self.cfg.learner.lora is not None
        adapter = str(path.with_name(path.name.removesuffix("_hf") + "_adapter")) if lora else None
        return self.trained.call(DeepSpeedWorker.save_hf, str(path), self.inputs.trained_path, adapter)

    @property
    def hf_export(self) -> str:
        """A trained reward model is no policy: its export is named for its role."""
        return "policy_hf" if self.spec.trained_role == "learner" else f"{self.spec.trained_role}_hf"

    def resume(self) -> tuple[int, dict[int, dict[str, float]]]:
        """(step to continue after, held-out metrics so far): (0, {}) for a fresh run. The preflight
        resolved trainer.resume and checked the checkpoint fits."""
        path = self.checked.resume_from
        if path is None:
            return 0, {}
        state = self.restore_checkpoint(path)
        self.last_checkpoint = str(path)
        return state["step"], {int(s): m for s, m in state.get("eval", {}).items()}  # JSON made the steps strings

    def restore_checkpoint(self, path: Path) -> dict:
        """Loads the trainable groups and the controller state, then gives every rollout engine the
        restored weights before anything is generated."""
        state = read_controller_state(path)
        for role in self.trainable:
            g = self.groups[role]
            g.get(g.call(DeepSpeedWorker.load_state, str(path / role)), f"restore ({role})")
        self.restore_controller(state)
        print(f"[resume] from {path} at step {state['step']}", flush=True)
        return state

    def restore_controller(self, state: dict) -> dict:
        """Sampler, RNG, extra state and engine weights back to ``state``; metrics rows after its step dropped."""
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.load_extra_state(state)
        if self.rollout is not None:
            self.sync_weights(state.get("version", 0))
        truncate_metrics(self.run_dir / "metrics.jsonl", state["step"])
        return state

    def sync_weights(self, version: int) -> dict[str, float]:
        raise NotImplementedError("only loops with rollout engines sync weights")

    # ------------------------------------------------------------------ actor failures
    def recovering(self, stage: str, fn):
        """Runs ``fn``; when an actor of an untrained role (rollout, reward, reference) dies in it,
        those actors are started again (``restart_dead_actors``; dropped when their node is lost and no
        other node can take them) and the stage is run again. A lost rank of a trained group raises
        TrainableLost: its optimizer state is gone, so the loop goes back to the last checkpoint
        (``restore_trainables``)."""
        while True:
            try:
                return fn()
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                lost = {role: self.groups[role].dead_ranks() for role in self.trainable}
                if any(lost.values()):
                    raise TrainableLost({r: d for r, d in lost.items() if d}, stage) from e
                self.count_restart(stage, e)
                changed = self.restart_dead_actors()
                if not changed:
                    raise
                print(f"[recover] {stage}: restarted {', '.join(changed)}; running the stage again", flush=True)

    def count_restart(self, stage: str, error: BaseException) -> None:
        if self.restarts >= self.cfg.trainer.max_actor_restarts:
            raise RuntimeError(f"{stage}: actor failure after {self.restarts} restarts (trainer.max_actor_restarts); "
                               f"continue from the last checkpoint with trainer.resume=auto: {error}") from error
        self.restarts += 1

    def restart_dead_actors(self, sync: bool = True) -> list[str]:
        """Dead actors of the untrained roles started again in their bundles. One whose bundle finds no
        node (its node lost, no other offering its resources) is dropped and the role goes on with
        fewer actors, unless none would be left. ``sync``: engines get the current weights
        (``after_restart``); not when the caller syncs every engine next. Returns what changed."""
        changed = []
        for role, g in self.groups.items():
            dead = [] if role in self.trainable else g.dead_ranks()
            if not dead:
                continue
            g.respawn(dead)
            unplaced = g.unplaced(dead)
            if len(unplaced) == g.size:
                raise ResourcesLost(self.unplaceable(g, unplaced))
            names = {i: f"{role}-{g.ranks[i]}" for i in dead}
            placed_ranks = [g.ranks[i] for i in dead if i not in unplaced]
            # Dropped first: a weight group formed for the restarted engines must not wait on unplaced ones.
            g.drop(unplaced)
            placed = [g.ranks.index(r) for r in placed_ranks]
            if placed:
                g.get(g.call_ranks(g.worker_cls.init_model, placed, self.inputs.model_paths[role]), f"{role} restart")
                if sync:
                    self.after_restart(role, placed)
            changed += [f"{role}-{r}" for r in placed_ranks] + [f"{names[i]} (dropped)" for i in unplaced]
            if unplaced:
                what = "engines" if role == "rollout" else f"{role} actors"
                print(f"[recover] {', '.join(names[i] for i in unplaced)} lost with its node and not placed again "
                      f"within {g.placement_wait_s:g}s (each needs {g.describe_needs()}): continuing with "
                      f"{g.size} {what}", flush=True)
        return changed

    def unplaceable(self, g: WorkerGroup, positions: list[int]) -> str:
        """Why the run stops: which actors found no node, what each needs, how to go on."""
        ranks = [g.ranks[i] for i in positions]
        last = self.last_checkpoint or "none yet (a resumed run starts over)"
        other = (f"its checkpointed state loads only into {g.world_size} ranks: to go on with fewer, start a new run "
                 f"with a lower {g.role}.num_actors" if g.role in self.trainable else
                 f"or resume with a {g.role}.num_actors / resources_per_actor that fits the nodes left")
        return (f"{g.role} ranks {ranks} of {g.world_size} were lost with their node and not placed again within "
                f"{g.placement_wait_s:g}s: each needs {g.describe_needs()} ({g.role}.num_cpus_per_actor, "
                f"num_gpus_per_actor, resources_per_actor) and no alive node has that free. Last checkpoint: {last}. "
                f"Resume with trainer.resume=auto once nodes offering it are back; {other}")

    def after_restart(self, role: str, ranks: list[int]) -> None:
        """What a restarted actor needs beyond its model (an engine: the current weights)."""

    def restore_trainables(self, lost: TrainableLost) -> dict:
        """A trained group's rank died: every rank of its group is started again (the survivors are
        stuck in collectives with the dead one), then all trainable groups, the sampler and the RNG
        go back to the last checkpoint, or to the start of the run when none was written yet.
        Returns the controller state restored to; its "step" is the last step that counts."""
        self.count_restart(str(lost), lost)
        # Without a checkpoint every trainable group goes back to the initial weights, not only the lost one.
        restart = list(lost.ranks) if self.last_checkpoint else list(self.trainable)
        for role in restart:
            g = self.groups[role]
            g.respawn(list(range(g.size)))
            unplaced = g.unplaced(list(range(g.size)))
            if unplaced:  # a data-parallel group cannot go on with fewer ranks than its checkpoint
                raise ResourcesLost(self.unplaceable(g, unplaced)) from lost
        print(f"[recover] {lost}; restarting {', '.join(restart)} and going back to "
              f"{self.last_checkpoint or 'the start of the run (no checkpoint yet)'}", flush=True)
        self.load_models(restart)
        # Engines, reward or reference on the same lost node: back (or dropped) before the restore syncs every engine.
        self.restart_dead_actors(sync=False)
        if self.last_checkpoint:
            return self.restore_checkpoint(Path(self.last_checkpoint))
        return self.restore_controller(self.initial_state)


def mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Per-rank metrics of a group → one value each (mean over ranks)."""
    keys = dicts[0].keys() if dicts else ()
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in keys}


def check_finite(metrics: dict[str, float], step: int, last_checkpoint: str | None) -> None:
    """A NaN or Inf loss, reward or KL stops the run before it is logged or saved over a good checkpoint."""
    bad = {k: v for k, v in metrics.items() if isinstance(v, float) and not math.isfinite(v)
           and k.split("/")[0] in FINITE_CHECKED}
    if bad:
        keep = f"the last good checkpoint is {last_checkpoint}" if last_checkpoint else "no checkpoint was written yet"
        raise FloatingPointError(f"step {step}: non-finite {bad}; stopping ({keep}; resume with trainer.resume=auto "
                                 f"after lowering learner.lr or checking the reward)")


def truncate_metrics(path: Path, step: int) -> None:
    """Drops rows logged after ``step`` by the run that crashed: the resumed run logs them again."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))
