"""What every loop with rollout engines shares: the stages that move samples between the roles.

The PPO family (rlhf_ray.trainers.ppo), RAFT and the best-of-n command all sample prompts,
generate with the rollout engines, score with the reward role, evaluate greedily on the held-out
prompts and (when they train) push the learner's weights to the engines. OnlineController owns
exactly those stages; the loop, checkpoints and recovery come from Controller.
"""

from __future__ import annotations

import json
import time

from rlhf_ray.batch import Batch, build_batch, split_batch, split_list
from rlhf_ray.dispatch import generate_balanced
from rlhf_ray.roles import PolicyLearner, Rollout
from rlhf_ray.sync.formation import form_weight_group
from rlhf_ray.trainers.controller import Controller
from rlhf_ray.trainers.inputs import PromptInputs


class OnlineController(Controller):
    inputs_type = PromptInputs
    inputs: PromptInputs

    def __init__(self, inputs: PromptInputs, roles: tuple[str, ...] | None = None):
        super().__init__(inputs, roles)
        self.train_set, self.eval_set = inputs.train_set, inputs.eval_set
        self.weight_group_members: list | None = None  # actors of the current weight group (sync.transport=collective)

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
        # An engine or reward actor lost here (its node gone) is replaced or dropped as in a step.
        gen = self.recovering("evaluate", lambda: self.generate(es.ids, greedy=True, seed=0))
        batch = build_batch(es.ids, gen["response_ids"], self.tokenizer.pad_token_id)
        scores = self.recovering("evaluate", lambda: self.reward.gather_cat(self.score(batch, es.rows, gen["texts"]),
                                                                            "eval scores"))
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
