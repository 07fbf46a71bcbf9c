"""What every loop with rollout engines shares: the stages that move samples between the roles.

The PPO family (rlhf_ray.trainers.ppo), RAFT and the best-of-n command all sample prompts,
generate with the rollout engines, score with the reward role, evaluate greedily on the held-out
prompts and (when they train) push the learner's weights to the engines. OnlineController owns
exactly those stages; the loop, checkpoints and recovery come from Controller.
"""

from __future__ import annotations

import itertools
import json
import time

import torch

from rlhf_ray.cluster.dispatch import generate_balanced, trajectories_balanced
from rlhf_ray.config import Config
from rlhf_ray.data.batch import Batch, build_batch, split_batch, split_list
from rlhf_ray.envs.metrics import trajectory_metrics
from rlhf_ray.roles import PolicyLearner, Rollout
from rlhf_ray.trainers.compare import Comparison, answers
from rlhf_ray.trainers.controller import Controller
from rlhf_ray.trainers.inputs import PromptInputs
from rlhf_ray.trainers.weight_group import form_weight_group


def inference_roles(cfg: Config) -> tuple[str, ...]:
    """The roles a command that samples without training starts (best-of-n, eval): the engines, the
    reward actors and, with env.*, the environment actors."""
    return tuple(r for r in ("rollout", "reward", "env") if r in cfg.roles)


class OnlineController(Controller):
    inputs_type = PromptInputs
    inputs: PromptInputs

    def __init__(self, inputs: PromptInputs, roles: tuple[str, ...] | None = None):
        # trainer.eval.baseline: the judged comparison beside the held-out accuracy; its baseline and judge
        # are checked now, before any actor starts (the judge's actors start at the first comparison)
        self.comparison = (Comparison(inputs.cfg, inputs.model_paths["rollout"]) if inputs.cfg.trainer.eval.baseline
                           else None)
        super().__init__(inputs, roles)
        self.train_set, self.eval_set = inputs.train_set, inputs.eval_set
        self.weight_group_members: list | None = None  # actors of the current weight group (sync.transport=collective)
        self.call_ids = itertools.count()  # names each multi-turn generation's trajectories on the environment actors
        self.standalone_eval = False  # `rlhf-ray eval`: every evaluation compares
        mode, why = self.cfg.lora_sync_choice()
        if mode is not None and "learner" in self.roles:
            lora = self.cfg.learner.lora
            what = ("the adapter alone, served by vLLM's LoRA support as a new version per sync" if mode == "adapter"
                    else "the merged weights of the layers the adapter touches")
            print(f"[sync] learner.lora (r={lora.rank}, α={lora.alpha:g}, {len(lora.targets)} target modules): "
                  f"each weight sync sends {what} ({why})", flush=True)
        if self.cfg.spec.update == "policy" and "learner" in self.roles:  # the values the policy loss reads
            print(f"[algorithm] {self.cfg.algorithm}: " + ", ".join(
                f"{key}={value} ({source})" for key, value, source in self.cfg.algorithm_settings()), flush=True)

    def generate(self, prompt_ids: list[list[int]], greedy: bool, seed: int, rows: list[dict] | None = None) -> dict:
        """Prompts go to the rollout engine with the least outstanding work; answers come back in order.
        With an environment (env.*) each prompt row starts a multi-turn trajectory (rlhf_ray.envs.loop):
        ``texts`` are then the final turns, and ``policy_mask`` marks the policy's own tokens."""
        timeout = self.cfg.trainer.call_timeout_s
        if self.cfg.env.enabled:
            return trajectories_balanced(self.rollout.actors, self.env.actors, rows, prompt_ids, greedy, seed,
                                         f"c{next(self.call_ids)}", timeout_s=timeout)
        out = generate_balanced(self.rollout.actors, prompt_ids, greedy, seed, timeout_s=timeout)
        out["texts"] = self.tokenizer.batch_decode(out["response_ids"], skip_special_tokens=True)
        return out

    def gather_scores(self, refs: list, gen: dict, what: str) -> torch.Tensor:
        """The reward actors' scores (none with reward.kind=env) plus the environment's rewards; a
        trajectory whose environment failed scores env.failure_reward."""
        n = len(gen["response_ids"])
        scores = self.reward.gather_cat(refs, what) if self.reward is not None else torch.zeros(n)
        if "env_reward" not in gen:
            return scores
        scores = scores + torch.tensor(gen["env_reward"], dtype=scores.dtype)
        return torch.where(torch.tensor(gen["failed"]), torch.tensor(self.cfg.env.failure_reward, dtype=scores.dtype), scores)

    def score(self, batch: Batch, rows: list[dict], texts: list[str]):
        """Reward refs, one per reward actor, for the samples split evenly across them (in order); none
        when the environment's rewards are the score (reward.kind=env)."""
        if self.reward is None:
            return []
        n = self.reward.size
        prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
        # Only a reward model reads tokens; a rule or a remote service gets the texts alone.
        batches = split_batch(batch, n) if self.cfg.reward.kind == "model" else [None] * n
        shards = zip(self.reward.actors, batches, split_list(prompts, n), split_list(texts, n),
                     split_list(answers, n))
        return [a.score.remote(b, p, t, ans) for a, b, p, t, ans in shards]

    def generate_and_score(self, prompt_set, rows: list[int], seed: int):
        """Samples one response per entry of ``rows`` and scores it: (gen, batch, scores)."""
        ids, row_dicts = [prompt_set.ids[i] for i in rows], [prompt_set.rows[i] for i in rows]
        gen = self.generate(ids, greedy=False, seed=seed, rows=row_dicts)
        batch = build_batch(ids, gen["response_ids"], self.tokenizer.pad_token_id, gen["logprobs"], gen.get("policy_mask"))
        scores = self.gather_scores(self.score(batch, row_dicts, gen["texts"]), gen, "reward scores")
        return gen, batch, scores

    def evaluate(self, step: int) -> dict[str, float]:
        """Greedy accuracy on the held-out prompts; the answers are written beside the metrics."""
        start = time.perf_counter()
        es = self.eval_set
        # An engine or reward actor lost here (its node gone) is replaced or dropped as in a step.
        gen = self.recovering("evaluate", lambda: self.generate(es.ids, greedy=True, seed=0, rows=es.rows))
        batch = build_batch(es.ids, gen["response_ids"], self.tokenizer.pad_token_id, policy_masks=gen.get("policy_mask"))
        scores = self.recovering("evaluate", lambda: self.gather_scores(self.score(batch, es.rows, gen["texts"]), gen,
                                                                        "eval scores"))
        with (self.run_dir / f"eval_step{step:05d}.jsonl").open("w") as f:
            for i, (row, text, s) in enumerate(zip(es.rows, gen["texts"], scores.tolist())):
                record = {"prompt": row["prompt"], "answer": row["answer"], "response": text, "score": s}
                if "policy_mask" in gen:  # the whole trajectory, observations included, and how it went
                    record.update(transcript=self.tokenizer.decode(gen["response_ids"][i]), turns=gen["turns"][i],
                                  finish=gen["finish_reasons"][i], **gen["counters"][i])
                f.write(json.dumps(record) + "\n")
        acc = float(scores.mean())
        print(f"[eval] step {step}: held-out accuracy {acc:.3f} on {len(es.ids)} prompts "
              f"({time.perf_counter() - start:.1f}s)", flush=True)
        metrics = {"eval/accuracy": acc, "time/eval": time.perf_counter() - start}
        if "policy_mask" in gen:
            metrics.update({f"eval/{k}": v for k, v in trajectory_metrics(gen).items()})
        if self.comparison is not None and self.comparison.due(step, None if self.standalone_eval else self.total_steps):
            compare_start = time.perf_counter()
            policy = answers(gen["texts"], gen)
            metrics.update(self.comparison.run(step, es.rows, policy, self.version == 0, self.run_id))
            metrics["time/eval_compare"] = time.perf_counter() - compare_start
        return metrics

    def evaluates_at(self, step: int) -> bool:
        every = self.cfg.trainer.eval.every if self.comparison is not None else 0
        return super().evaluates_at(step) or bool(every) and step % every == 0

    def shutdown(self) -> None:
        if self.comparison is not None:
            self.comparison.shutdown()
        super().shutdown()

    def sync_weights(self, version: int) -> dict[str, float]:
        """Learner → every rollout engine; fails unless every engine then serves ``version``."""
        self.version = version
        sync = self.push_weights(self.rollout.actors, "weight sync")
        versions = self.rollout.get(self.rollout.call(Rollout.get_version), "rollout version")
        if any(v != version for v in versions):
            raise RuntimeError(f"weight sync failed: rollout versions {versions}, learner at {version}")
        return sync

    def push_weights(self, engines: list, what: str) -> dict[str, float]:
        """The learner's current weights to ``engines`` (a broadcast reaches the whole weight group:
        there, every engine)."""
        if self.cfg.sync.transport == "collective":
            engines = self.rollout.actors
            self.ensure_weight_group()
        refs = self.learner.call(PolicyLearner.push_weights, engines, self.version)
        return self.learner.get(refs, what)[0]

    def ensure_weight_group(self) -> None:
        """The broadcast group of the learner's rank 0 and every engine worker, made anew whenever its
        members changed (an actor restarted, an engine dropped)."""
        if self.weight_group_members != [self.learner.actors[0], *self.rollout.actors]:
            self.weight_group_members = form_weight_group(self.learner, self.rollout,
                                                          self.cfg.rollout.tensor_parallel_size)

    def after_restart(self, role: str, ranks: list[int]) -> None:
        if role == "rollout" and self.version > 0:  # a new engine starts from the initial weights
            self.push_weights([self.rollout.actors[r] for r in ranks], "weight sync to restarted engines")
