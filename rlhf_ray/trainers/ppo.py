"""The online PPO controller: one loop that reads like the algorithm.

    sample prompts → generate → {reference log-probs, values, rewards, old log-probs} in parallel
    → KL-penalised token rewards → GAE → whitening → PPO epochs (learner ∥ critic) → weight sync → log

The controller holds no model: it owns the worker groups, the prompt sampler and the KL controller,
and moves batches between them. Each stage is timed (``time/<stage>``).
"""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
from tqdm import tqdm

from rlhf_ray.algos import ADVANTAGE_ESTIMATORS, AdaptiveKLController, FixedKLController, kl_penalized_rewards
from rlhf_ray.algos.masked import masked_mean, masked_whiten
from rlhf_ray.batch import Batch, build_batch, split_batch, split_list
from rlhf_ray.config import Config
from rlhf_ray.groups import shutdown_groups, start_groups
from rlhf_ray.prompts import PromptSampler, load_task
from rlhf_ray.report import write_report
from rlhf_ray.tracking import StageTimer, Tracker
from rlhf_ray.trainers.session import init_ray, make_run_dir, resolve_model_path, run_id


class PPOTrainer:
    def __init__(self, cfg: Config):
        from rlhf_ray.models.loading import load_tokenizer
        from rlhf_ray.roles import Critic, PolicyLearner, Reference, Reward, Rollout

        self.cfg = cfg
        # Everything that can be wrong with the input fails here, before any actor starts.
        self.policy_path = resolve_model_path(cfg.model.path)
        paths = {
            "rollout": self.policy_path, "learner": self.policy_path,
            "critic": resolve_model_path(cfg.critic.model_path or cfg.model.path),
            "reference": resolve_model_path(cfg.reference.model_path or cfg.model.path),
            "reward": resolve_model_path(cfg.reward.model_path) if cfg.reward.kind == "model" else None,
        }
        if cfg.reward.kind == "model" and not cfg.reward.model_path:
            raise ValueError("reward.kind=model needs reward.model_path")
        if cfg.reward.kind == "rule":
            from rlhf_ray.roles.reward import import_reward_function

            import_reward_function(cfg.reward.function)
        self.tokenizer = load_tokenizer(self.policy_path)
        self.train_set, self.eval_set = load_task(cfg, self.tokenizer)
        self.sampler = PromptSampler(len(self.train_set.ids), cfg.trainer.seed)
        k = cfg.ppo.kl
        self.kl_ctl = AdaptiveKLController(k.coef, k.target, k.horizon) if k.target else FixedKLController(k.coef)
        self.run_dir = make_run_dir(cfg)

        init_ray(cfg)
        rid = run_id()
        classes = {"rollout": Rollout, "learner": PolicyLearner, "critic": Critic, "reference": Reference, "reward": Reward}
        self.groups = start_groups(cfg, classes, rid)
        self.rollout, self.learner, self.critic = self.groups["rollout"], self.groups["learner"], self.groups["critic"]
        self.reference, self.reward = self.groups["reference"], self.groups["reward"]
        for role in ("learner", "critic"):  # data-parallel groups meet at rank 0's address
            g = self.groups[role]
            addr, port = g.get([g.actors[0].master_address.remote()])[0]
            g.get(g.call("setup_distributed", addr, port), f"{role} distributed setup")
        inits = {role: g.call("init_model", paths[role]) for role, g in self.groups.items()}
        for role, refs in inits.items():
            self.groups[role].get(refs, f"{role} model load")
        self.version = 0
        self.tracker = Tracker(cfg, self.run_dir, run_name=rid)

    # ------------------------------------------------------------------ the loop
    def fit(self) -> dict:
        cfg = self.cfg.trainer
        history = {0: self.evaluate(0)}
        self.tracker.log(0, history[0], echo=None)
        bar = tqdm(range(1, cfg.total_steps + 1), desc="ppo", disable=not self.cfg.logging.progress_bar)
        for step in bar:
            metrics = self.step(step)
            if step == cfg.total_steps or (cfg.eval_every and step % cfg.eval_every == 0):
                history[step] = self.evaluate(step)
                metrics.update(history[step])
            self.tracker.log(step, metrics, echo=bar.write)
            bar.set_postfix(reward=f"{metrics['reward/mean']:.3f}", kl=f"{metrics['kl/mean']:.3f}")
        self.tracker.close()
        write_report(self.run_dir)
        summary = {"eval": {s: {k: v for k, v in m.items() if k.startswith("eval/")} for s, m in history.items()}}
        (self.run_dir / "summary.json").write_text(json.dumps(summary, indent=1))
        return summary

    def step(self, step: int) -> dict[str, float]:
        ppo, timer = self.cfg.ppo, StageTimer()
        start = time.perf_counter()
        with timer("generate"):
            rows = [i for i in self.sampler.next(ppo.prompts_per_step_global) for _ in range(ppo.samples_per_prompt)]
            gen = self.generate([self.train_set.ids[i] for i in rows], greedy=False, seed=step * 1_000_003)
            batch = build_batch([self.train_set.ids[i] for i in rows], gen["response_ids"],
                                self.tokenizer.pad_token_id, gen["logprobs"])
        with timer("score"):  # four independent passes, all in flight at once
            ref = self.reference.map_batch("compute_logprobs", batch)
            old = self.learner.map_batch("compute_logprobs", batch)
            val = self.critic.map_batch("compute_values", batch)
            rew = self.score(batch, [self.train_set.rows[i] for i in rows], gen["texts"])
            batch["ref_logprobs"] = self.reference.gather_cat(ref, "reference log-probs")
            batch["old_logprobs"] = self.learner.gather_cat(old, "learner log-probs")
            batch["old_values"] = self.critic.gather_cat(val, "critic values")
            scores = self.reward.gather_cat(rew, "reward scores")
        with timer("advantages"):
            mask = batch["response_mask"]
            beta = self.kl_ctl.value
            token_rewards, kl = kl_penalized_rewards(scores, batch["old_logprobs"], batch["ref_logprobs"], mask,
                                                     beta if ppo.kl.placement == "reward" else 0.0, ppo.kl.estimator)
            adv, returns = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards=token_rewards, values=batch["old_values"],
                                                           mask=mask, gamma=ppo.gamma, lam=ppo.lam)
            batch["advantages"] = masked_whiten(adv, mask) if ppo.whiten_advantages else adv
            batch["returns"] = returns
        with timer("update"):  # learner and critic train side by side
            pol = self.learner.map_batch("train_ppo", batch, beta)
            crit = self.critic.map_batch("train_values", batch)
            pol_m, crit_m = self.learner.get(pol, "PPO update"), self.critic.get(crit, "value update")
        with timer("sync"):
            self.version = step
            sync = self.learner.get(self.learner.call("push_weights", self.rollout.actors, self.version,
                                                      self.cfg.trainer.weight_sync_bucket_mb), "weight sync")[0]
            versions = self.rollout.get(self.rollout.call("get_version"), "rollout version")
            if any(v != self.version for v in versions):
                raise RuntimeError(f"weight sync failed: rollout versions {versions}, learner at {self.version}")
        seq_kl = (kl * mask).sum(-1)
        self.kl_ctl.update(float(seq_kl.mean()), len(rows))
        metrics = {**_mean_dicts(pol_m), **_mean_dicts(crit_m), **sync, **timer.seconds}
        metrics.update(self._sample_metrics(batch, scores, kl, seq_kl, gen, beta))
        metrics["time/step"] = time.perf_counter() - start
        metrics["throughput/samples_per_s"] = len(rows) / metrics["time/step"]
        metrics["throughput/gen_tokens_per_s"] = float(batch["response_lengths"].sum()) / metrics["time/generate"]
        return metrics

    # ------------------------------------------------------------------ stages
    def generate(self, prompt_ids: list[list[int]], greedy: bool, seed: int) -> dict:
        """Splits prompts across the rollout engines and joins their answers in order."""
        shards = split_list(prompt_ids, self.rollout.size)
        refs = [a.generate.remote(s, greedy, seed + 7_919 * i) for i, (a, s) in enumerate(zip(self.rollout.actors, shards))]
        outs = self.rollout.get(refs, "generation")
        joined = {k: [x for o in outs for x in o[k]] for k in ("response_ids", "logprobs", "finish_reasons")}
        joined["texts"] = self.tokenizer.batch_decode(joined["response_ids"], skip_special_tokens=True)
        joined["versions"] = [o["version"] for o in outs]
        return joined

    def score(self, batch: Batch, rows: list[dict], texts: list[str]):
        """Reward refs, one per reward actor, for the samples split evenly across them."""
        n = self.reward.size
        prompts, answers = [r["prompt"] for r in rows], [r["answer"] for r in rows]
        shards = zip(self.reward.actors, split_batch(batch, n), split_list(prompts, n), split_list(texts, n),
                     split_list(answers, n))
        return [a.score.remote(b, p, t, ans) for a, b, p, t, ans in shards]

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

    def _sample_metrics(self, batch: Batch, scores, kl, seq_kl, gen, beta) -> dict[str, float]:
        mask = batch["response_mask"]
        gap = (batch["rollout_logprobs"] - batch["old_logprobs"]).abs()
        lengths = batch["response_lengths"].float()
        return {
            "reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
            "kl/mean": float(seq_kl.mean()), "kl/token_mean": float(masked_mean(kl, mask)), "kl/beta": beta,
            "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
            "response/truncated_frac": sum(r == "length" for r in gen["finish_reasons"]) / len(lengths),
            "advantages/mean": float(masked_mean(batch["advantages"], mask)),
            "returns/mean": float(masked_mean(batch["returns"], mask)),
            # Rollout and learner score the same tokens with the same weights: a gap means broken sync.
            "check/logprob_gap_mean": float(masked_mean(gap, mask)),
            "check/logprob_gap_max": float((gap * mask).max()),
        }

    def shutdown(self) -> None:
        shutdown_groups(self.groups)


def _mean_dicts(dicts: list[dict[str, float]]) -> dict[str, float]:
    keys = dicts[0].keys()
    return {k: sum(d[k] for d in dicts) / len(dicts) for k in keys}


def run(cfg: Config) -> dict:
    trainer = PPOTrainer(cfg)
    try:
        return trainer.fit()
    finally:
        trainer.shutdown()
