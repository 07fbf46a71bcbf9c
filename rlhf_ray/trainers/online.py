"""What every online loop shares: the role actors and the stages that move samples between them.

PPO, the critic-free family (GRPO, RLOO, REINFORCE++), RAFT and the best-of-n command all sample
prompts, generate with the rollout engines, score with the reward role, evaluate greedily on the
held-out prompts and (when they train) push the learner's weights to the engines. OnlineController
owns exactly that; each loop adds its own update on top and starts only the roles it needs.
"""

from __future__ import annotations

import json
import time

from rlhf_ray.batch import Batch, build_batch, split_batch, split_list
from rlhf_ray.checkpoint import rng_state, set_rng_state
from rlhf_ray.config import Config
from rlhf_ray.dispatch import generate_balanced
from rlhf_ray.groups import WorkerGroup, shutdown_groups, start_groups
from rlhf_ray.prompts import PromptSampler, load_task
from rlhf_ray.trainers.session import init_ray, make_run_dir, resolve_model_path, run_id

TRAINABLE = ("learner", "critic")  # DeepSpeed groups: their ranks meet before loading a model


class TrainableLost(RuntimeError):
    """A learner or critic rank died. ``ranks``: role → dead ranks."""

    def __init__(self, ranks: dict[str, list[int]], stage: str):
        self.ranks = ranks
        super().__init__(f"{stage}: " + ", ".join(f"{role} ranks {d} died" for role, d in ranks.items()))


def repeat_prompts(indices: list[int], n: int) -> list[int]:
    """Each prompt index n times in a row. The n samples of a prompt must be consecutive rows:
    GRPO/RLOO and best-of-n selection read them as groups of n, and generation, scoring and the
    learner's log-probs all keep row order."""
    return [i for i in indices for _ in range(n)]


def mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    """Per-rank metrics of a group → one value each (mean over ranks)."""
    keys = dicts[0].keys() if dicts else ()
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in keys}


class OnlineController:
    """Starts ``roles`` as Ray actor groups (``self.rollout``, ``self.learner``, ... ; None when not
    started) and provides generate / score / evaluate / weight-sync stages over them."""

    def __init__(self, cfg: Config, roles: tuple[str, ...]):
        from rlhf_ray.models.loading import load_tokenizer

        self.cfg, self.roles = cfg, roles
        # Everything that can be wrong with the input fails here, before any actor starts.
        self.policy_path = resolve_model_path(cfg.model.path)
        self.model_paths = paths = {role: self._model_path(role) for role in roles}
        self.tokenizer = load_tokenizer(self.policy_path)
        self.train_set, self.eval_set = load_task(cfg, self.tokenizer)
        self.sampler = PromptSampler(len(self.train_set.ids), cfg.trainer.seed)
        self.run_dir = make_run_dir(cfg)
        self.version = 0

        init_ray(cfg, roles)
        self.run_id = run_id()
        from rlhf_ray import roles as role_classes

        classes = {"rollout": role_classes.Rollout, "learner": role_classes.PolicyLearner,
                   "critic": role_classes.Critic, "reference": role_classes.Reference, "reward": role_classes.Reward}
        self.groups: dict[str, WorkerGroup] = start_groups(cfg, {r: classes[r] for r in roles}, self.run_id)
        try:
            self._load_models(paths)
        except BaseException:
            shutdown_groups(self.groups)  # no half-started run keeps its actors and placement groups
            raise
        for role in ("rollout", "learner", "critic", "reference", "reward"):
            setattr(self, role, self.groups.get(role))

    def _model_path(self, role: str) -> str | None:
        cfg = self.cfg
        if role in ("rollout", "learner"):
            return self.policy_path
        if role in ("critic", "reference"):
            return resolve_model_path(getattr(cfg, role).model_path or cfg.model.path)
        if cfg.reward.kind == "model":
            if not cfg.reward.model_path:
                raise ValueError("reward.kind=model needs reward.model_path")
            return resolve_model_path(cfg.reward.model_path)
        from rlhf_ray.roles.reward import import_reward_function

        import_reward_function(cfg.reward.function)
        return None

    def _load_models(self, paths: dict[str, str | None], roles=None) -> None:
        roles = list(self.groups) if roles is None else roles
        for role in TRAINABLE:  # data-parallel groups meet at rank 0's address
            if role in roles:
                g = self.groups[role]
                addr, port = g.get([g.actors[0].master_address.remote()])[0]
                g.get(g.call("setup_distributed", addr, port), f"{role} distributed setup")
        inits = {role: self.groups[role].call("init_model", paths[role]) for role in roles}
        for role, refs in inits.items():
            self.groups[role].get(refs, f"{role} model load")

    # ------------------------------------------------------------------ stages
    def sample_rows(self, prompts: int, samples_per_prompt: int) -> list[int]:
        """Training-set row of every sample of the next ``prompts`` prompts, grouped per prompt."""
        return repeat_prompts(self.sampler.next(prompts), samples_per_prompt)

    def generate(self, prompt_ids: list[list[int]], greedy: bool, seed: int) -> dict:
        """Prompts go to the rollout engine with the least outstanding work; answers come back in order."""
        out = generate_balanced(self.rollout.actors, prompt_ids, greedy, seed, timeout_s=self.cfg.trainer.call_timeout_s)
        out["texts"] = self.tokenizer.batch_decode(out["response_ids"], skip_special_tokens=True)
        return out

    def score(self, batch: Batch, rows: list[dict], texts: list[str]):
        """Reward refs, one per reward actor, for the samples split evenly across them (in order)."""
        n = self.reward.size
        prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
        # Only a reward model reads tokens; a rule or a remote service gets the texts alone.
        batches = split_batch(batch, n) if self.cfg.reward.kind == "model" else [None] * n
        shards = zip(self.reward.actors, batches, split_list(prompts, n), split_list(texts, n),
                     split_list(answers, n))
        return [a.score.remote(b, p, t, ans) for a, b, p, t, ans in shards]

    def generate_and_score(self, prompt_set, rows: list[int], seed: int):
        """Samples one response per entry of ``rows`` and scores it: (gen, batch, scores)."""
        ids = [prompt_set.ids[i] for i in rows]
        gen = self.generate(ids, greedy=False, seed=seed)
        batch = build_batch(ids, gen["response_ids"], self.tokenizer.pad_token_id, gen["logprobs"])
        scores = self.reward.gather_cat(self.score(batch, [prompt_set.rows[i] for i in rows], gen["texts"]),
                                        "reward scores")
        return gen, batch, scores

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy accuracy on the held-out prompts; the answers are written beside the metrics."""
        start = time.perf_counter()
        es = self.eval_set
        gen = self.generate(es.ids, greedy=True, seed=0)
        batch = build_batch(es.ids, gen["response_ids"], self.tokenizer.pad_token_id)
        scores = self.reward.gather_cat(self.score(batch, es.rows, gen["texts"]), "eval scores")
        with (self.run_dir / f"eval_step{step:05d}.jsonl").open("w") as f:
            for row, text, s in zip(es.rows, gen["texts"], scores.tolist()):
                f.write(json.dumps({"prompt": row["prompt"], "answer": row["answer"], "response": text, "score": s}) + "\n")
        acc = float(scores.mean())
        print(f"[eval] step {step}: held-out accuracy {acc:.3f} on {len(es.ids)} prompts "
              f"({time.perf_counter() - start:.1f}s)", flush=True)
        return {"eval/accuracy": acc, "time/eval": time.perf_counter() - start}

    def sync_weights(self, version: int) -> dict[str, float]:
        """Learner → every rollout engine; fails unless every engine then serves ``version``."""
        self.version = version
        sync = self.learner.get(self.learner.call("push_weights", self.rollout.actors, version,
                                                  self.cfg.trainer.weight_sync_bucket_mb), "weight sync")[0]
        versions = self.rollout.get(self.rollout.call("get_version"), "rollout version")
        if any(v != version for v in versions):
            raise RuntimeError(f"weight sync failed: rollout versions {versions}, learner at {version}")
        return sync

    # ------------------------------------------------------------------ actor failures
    restarts = 0

    def recovering(self, stage: str, fn):
        """Runs ``fn``; when a rollout, reward or reference actor dies in it, those actors are started
        again (model reloaded, engines given the current weights) and the stage is run again. A lost
        learner or critic rank raises TrainableLost: its optimizer state is gone, so the loop goes
        back to the last checkpoint (``restore_trainables``)."""
        import ray

        while True:
            try:
                return fn()
            except (ray.exceptions.RayActorError, ray.exceptions.RayTaskError) as e:
                lost = {role: self.groups[role].dead_ranks() for role in TRAINABLE if role in self.groups}
                if any(lost.values()):
                    raise TrainableLost({r: d for r, d in lost.items() if d}, stage) from e
                self._count_restart(stage, e)
                restarted = self.restart_dead_actors()
                if not restarted:
                    raise
                print(f"[recover] {stage}: restarted {', '.join(restarted)}; running the stage again", flush=True)

    def _count_restart(self, stage: str, error: BaseException) -> None:
        if self.restarts >= self.cfg.trainer.max_actor_restarts:
            raise RuntimeError(f"{stage}: actor failure after {self.restarts} restarts (trainer.max_actor_restarts); "
                               f"continue from the last checkpoint with trainer.resume=auto: {error}") from error
        self.restarts += 1

    def restart_dead_actors(self) -> list[str]:
        restarted = []
        for role in ("rollout", "reward", "reference"):
            g = self.groups.get(role)
            dead = g.dead_ranks() if g else []
            if not dead:
                continue
            g.respawn(dead)
            g.get([g.actors[r].init_model.remote(self.model_paths[role]) for r in dead], f"{role} restart")
            if role == "rollout" and self.version > 0:  # a new engine starts from the initial weights
                self.learner.get(self.learner.call("push_weights", [g.actors[r] for r in dead], self.version,
                                                   self.cfg.trainer.weight_sync_bucket_mb), "weight sync to restarted engines")
            restarted += [f"{role}-{r}" for r in dead]
        return restarted

    def restore_trainables(self, lost: "TrainableLost", last_checkpoint: str | None) -> dict:
        """A learner or critic rank died: every rank of its group is started again (the survivors
        are stuck in collectives with the dead one), then all trainable groups, the sampler and the
        RNG go back to the last checkpoint, or to the start of the run when none was written yet.
        Returns the controller state restored to; its "step" is the last step that counts."""
        from pathlib import Path

        self._count_restart(str(lost), lost)
        # Without a checkpoint every trainable group goes back to the initial weights, not only the lost one.
        restart = list(lost.ranks) if last_checkpoint else [r for r in TRAINABLE if r in self.groups]
        for role in restart:
            self.groups[role].respawn(list(range(self.groups[role].size)))
        print(f"[recover] {lost}; restarting {', '.join(restart)} and going back to "
              f"{last_checkpoint or 'the start of the run (no checkpoint yet)'}", flush=True)
        self._load_models(self.model_paths, restart)
        if last_checkpoint:
            return self.restore_checkpoint(Path(last_checkpoint))
        return self._restore_controller(self.initial_state)

    def remember_initial_state(self, **extra) -> None:
        """What restore_trainables goes back to when a trainable rank dies before the first checkpoint."""
        self.initial_state = {"step": 0, "version": 0, "sampler": self.sampler.state_dict(), "rng": rng_state(),
                              **extra}

    # ------------------------------------------------------------------ checkpoints
    def save_checkpoint(self, step: int, extra_state: dict) -> str:
        """Every trainable group saves its ranks' states into a temporary folder, the controller adds
        its own state, and the folder is renamed only when whole (see rlhf_ray.checkpoint)."""
        from rlhf_ray.checkpoint import CheckpointManager
        from rlhf_ray.config import save_config

        manager = CheckpointManager(self.run_dir, self.cfg.trainer.keep_last)
        tmp = manager.begin(step)
        refs = {role: g.call("save_state", str(tmp / role)) for role, g in self.groups.items() if role in TRAINABLE}
        if self.cfg.trainer.save_hf:
            refs["policy_hf"] = self.learner.call("save_hf", str(tmp / "policy_hf"), self.policy_path)
        for role, r in refs.items():
            self.groups.get(role, self.learner).get(r, f"checkpoint ({role})")
        save_config(self.cfg, tmp / "config.yaml")
        state = {"step": step, "version": self.version, "sampler": self.sampler.state_dict(), "rng": rng_state(),
                 **extra_state}
        return str(manager.commit(tmp, state))

    def restore_checkpoint(self, path) -> dict:
        """Loads the trainable groups and controller state, then gives every rollout engine the
        restored weights before anything is generated."""
        from rlhf_ray.checkpoint import read_controller_state

        state = read_controller_state(path)
        for role, g in self.groups.items():
            if role in TRAINABLE:
                g.get(g.call("load_state", str(path / role)), f"restore ({role})")
        self._restore_controller(state)
        print(f"[resume] from {path} at step {state['step']}", flush=True)
        return state

    def _restore_controller(self, state: dict) -> dict:
        """Sampler, RNG and engine weights back to ``state``; metrics rows after its step dropped."""
        self.sampler.load_state_dict(state["sampler"])
        set_rng_state(state["rng"])
        self.sync_weights(state["version"])
        _truncate_metrics(self.run_dir / "metrics.jsonl", state["step"])
        return state

    def write_summary(self, history: dict[int, dict[str, float]]) -> dict:
        """End of a training run: report plots, and summary.json with the held-out metrics per step."""
        from rlhf_ray.report import write_report

        write_report(self.run_dir)
        summary = {"eval": {s: {k: v for k, v in m.items() if k.startswith("eval/")} for s, m in history.items()}}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def shutdown(self) -> None:
        shutdown_groups(self.groups)


def _truncate_metrics(path, step: int) -> None:
    """Drops rows logged after ``step`` by the run that crashed: the resumed run logs them again."""
    if path.is_file():
        rows = [line for line in path.read_text().splitlines() if line and json.loads(line)["step"] <= step]
        path.write_text("".join(r + "\n" for r in rows))
