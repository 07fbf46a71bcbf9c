"""The online RL controller of PPO and the critic-free family (GRPO, Dr. GRPO, GSPO, CISPO, RLOO, REINFORCE++).

    sample n responses per prompt → generate → {reference log-probs, old log-probs, values (PPO only),
    rewards} in parallel → KL penalty → advantages (the row's estimator: GAE with the critic, or a
    critic-free one) → epochs of the row's policy objective on the learner (∥ critic) → weight sync → log

The controller holds no model: it owns the worker groups (see OnlineController), the prompt sampler
and the KL controller, and moves batches between them. Each stage is timed (``time/<stage>``).
What varies by algorithm comes from its row (rlhf_ray.algorithms); the maths: docs/methods/online_rl.md.
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor

from rlhf_ray.algos import AdaptiveKLController, FixedKLController
from rlhf_ray.algos.masked import masked_mean, masked_var
from rlhf_ray.data.batch import Batch, build_batch
from rlhf_ray.envs.metrics import TRUNCATIONS, trajectory_metrics
from rlhf_ray.roles import Critic, PolicyLearner
from rlhf_ray.runs.tracking import StageTimer
from rlhf_ray.trainers.controller import mean_dicts
from rlhf_ray.trainers.estimate import group_metrics, penalize_and_estimate
from rlhf_ray.trainers.inputs import PromptInputs
from rlhf_ray.trainers.online import OnlineController


TRUNCATED = ("length",) + TRUNCATIONS  # a single turn's, or a trajectory's (rlhf_ray.envs.loop)


class PPOTrainer(OnlineController):
    """Every algorithm whose row's controller is "online": the row names its advantage estimator
    and policy objective; PPO's row alone starts a critic."""

    def __init__(self, inputs: PromptInputs):
        super().__init__(inputs)
        k = self.cfg.ppo.kl
        self.kl_ctl = AdaptiveKLController(k.coef, k.target, k.horizon) if k.target else FixedKLController(k.coef)
        self.rollouts = RolloutQueue(self)

    @property
    def total_steps(self) -> int:
        return self.cfg.trainer.total_steps

    def extra_state(self) -> dict:
        return {"kl_ctl": self.kl_ctl.state_dict()}

    def load_extra_state(self, state: dict) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])

    def step(self, step: int) -> dict[str, float]:
        ppo, timer = self.cfg.ppo, StageTimer()
        start = time.perf_counter()
        with timer("generate"):  # the n samples of a prompt are consecutive rows from here on
            rows, prompts, gen = self.rollouts.take(step)
            # Multi-turn: observation tokens are in the response but not the policy's (policy_mask).
            batch = build_batch(prompts, gen["response_ids"], self.tokenizer.pad_token_id, gen["logprobs"],
                                gen.get("policy_mask"))
            if ppo.async_rollout and step < self.cfg.trainer.total_steps:
                self.rollouts.start(step + 1)  # runs while this step scores and trains (one step off-policy)
        with timer("score"):
            scores = self.recovering("score", lambda: self._score_passes(batch, rows, gen))
        self.check_logprob_gap(step, batch, gen)  # before any update trains on samples from the wrong weights
        with timer("advantages"):
            beta = self.kl_ctl.value
            kl, seq_kl = penalize_and_estimate(self.cfg, batch, scores, beta)
        with timer("update"):  # learner and critic train side by side; β reaches the loss when placement=loss
            crit = self.critic.map_batch(Critic.train_values, batch) if self.critic else []
            pol_m = self.recovering("update", lambda: self.learner.get(
                self.learner.map_batch(PolicyLearner.train_policy, batch, beta), "policy update"))
        with timer("generate_wait"):  # new weights must not land in the middle of a batch
            self.rollouts.wait()
        with timer("sync"):  # while the critic may still be training: it needs nothing the sync changes
            sync = self.recovering("sync", lambda: self.sync_weights(step))
        with timer("critic_wait"):
            crit_m = self.recovering("update", lambda: self.critic.get(crit, "value update")) if crit else []
        self.kl_ctl.update(float(seq_kl.mean()), len(rows))
        metrics = {**mean_dicts(pol_m), **mean_dicts(crit_m), **sync, **timer.seconds}
        metrics.update(self._sample_metrics(batch, scores, kl, seq_kl, gen, beta))
        metrics.update(group_metrics(scores, ppo.samples_per_prompt))
        if "policy_mask" in gen:
            metrics.update(trajectory_metrics(gen))
        metrics["offpolicy/staleness"] = float(step - 1 - min(gen["versions"]))
        metrics["time/generate_busy"] = gen["seconds_total"]
        metrics["time/step"] = time.perf_counter() - start
        metrics["throughput/samples_per_s"] = len(rows) / metrics["time/step"]
        metrics["throughput/gen_tokens_per_s"] = float(batch["response_mask"].sum()) / metrics["time/generate"]
        return metrics

    def shutdown(self) -> None:
        self.rollouts.close()
        super().shutdown()

    def check_logprob_gap(self, step: int, batch: Batch, gen: dict) -> None:
        """Rollout and learner scored the same tokens: samples generated with the learner's current
        weights must agree to numerical noise. A larger gap means the weights never reached an
        engine, or arrived corrupted; the field's most reported silent failure. Samples of an
        asynchronous step (one update behind by design) are not compared."""
        if min(gen["versions"]) != self.version:
            return
        gap = float(masked_mean(logprob_gap(batch), batch["response_mask"]))
        limit = self.cfg.ppo.logprob_gap_warn
        if gap <= limit:
            return
        msg = (f"step {step}: rollout/learner log-prob gap {gap:.4g} > ppo.logprob_gap_warn={limit:g}: the rollout "
               f"engines may not serve the learner's weights (version {self.version}); check the weight sync")
        if self.cfg.ppo.logprob_gap_action == "stop":
            raise LogprobGapError(msg)
        print(f"[alarm] {msg}", flush=True)

    def _score_passes(self, batch: Batch, rows: list[int], gen: dict):
        """Reference log-probs, π_old log-probs, values and rewards: independent, all in flight at once.
        Fills the batch; returns the scores."""
        ref = self.ref_source.group.map_batch(self.ref_source.token_logprobs, batch)
        old = self.learner.map_batch(PolicyLearner.compute_logprobs, batch)
        val = self.critic.map_batch(Critic.compute_values, batch) if self.critic else None
        rew = self.score(batch, [self.train_set.rows[i] for i in rows], gen["texts"])  # the final turns
        batch["ref_logprobs"] = self.ref_source.group.gather_cat(ref, "reference log-probs")
        batch["old_logprobs"] = self.learner.gather_cat(old, "learner log-probs")
        if val is not None:
            batch["old_values"] = self.critic.gather_cat(val, "critic values")
        return self.gather_scores(rew, gen, "reward scores")

    def _sample_metrics(self, batch: Batch, scores, kl, seq_kl, gen, beta) -> dict[str, float]:
        mask, gap = batch["response_mask"], logprob_gap(batch)
        lengths = batch["response_lengths"].float()
        return {
            "reward/mean": float(scores.mean()), "reward/std": float(scores.std()) if len(scores) > 1 else 0.0,
            "kl/mean": float(seq_kl.mean()), "kl/token_mean": float(masked_mean(kl, mask)), "kl/beta": beta,
            "response/length_mean": float(lengths.mean()), "response/length_max": float(lengths.max()),
            "response/truncated_frac": sum(r in TRUNCATED for r in gen["finish_reasons"]) / len(lengths),
            "advantages/mean": float(masked_mean(batch["advantages"], mask)),
            "advantages/std": float(masked_var(batch["advantages"], mask).sqrt()),
            "returns/mean": float(masked_mean(batch["returns"], mask)),
            # Rollout and learner score the same tokens with the same weights: a gap means broken sync.
            "check/logprob_gap_mean": float(masked_mean(gap, mask)),
            "check/logprob_gap_max": float((gap * mask).max()),
        }


class RolloutQueue:
    """Each step's prompts and their generations. Synchronous: generated when the step asks.
    Asynchronous (ppo.async_rollout): step n+1's are generated on a controller thread while step n
    scores and trains, with the weights the engines hold then (one update behind the learner).

    Rows and seeds are drawn in step order either way, so both modes sample the same prompts with
    the same seeds; only the weights that answer them differ."""

    def __init__(self, trainer: "PPOTrainer"):
        self.trainer = trainer
        self.pending = None  # (step, rows, prompts, future)
        self.pool = None

    def _draw(self, step: int):
        ppo = self.trainer.cfg.ppo
        rows = self.trainer.inputs.sample_rows(ppo.prompts_per_step_global, ppo.samples_per_prompt)
        return rows, [self.trainer.train_set.ids[i] for i in rows]

    def _generate(self, rows: list[int], prompts, step: int) -> dict:
        start = time.perf_counter()
        row_dicts = [self.trainer.train_set.rows[i] for i in rows]  # an environment starts from its row
        gen = self.trainer.generate(prompts, greedy=False, seed=step * 1_000_003, rows=row_dicts)
        gen["seconds_total"] = time.perf_counter() - start
        return gen

    def start(self, step: int) -> None:
        self.pool = self.pool or ThreadPoolExecutor(max_workers=1, thread_name_prefix="rollout")
        rows, prompts = self._draw(step)
        self.pending = (step, rows, prompts, self.pool.submit(self._generate, rows, prompts, step))

    def wait(self) -> None:
        """Until the generation in flight (if any) has finished; its errors surface in take()."""
        if self.pending is not None:
            self.pending[3].exception()

    def take(self, step: int):
        """(rows, prompts, generation) of ``step``. A generation that failed (an engine died) is
        run again under the controller's actor recovery; one started before a restore to an
        earlier step is dropped, since the sampler went back with the checkpoint."""
        pending, self.pending = self.pending, None
        if pending is not None and pending[0] == step:
            _, rows, prompts, future = pending
            if future.exception() is None:
                return rows, prompts, future.result()
        else:
            if pending is not None:
                pending[3].exception()
            rows, prompts = self._draw(step)
        return rows, prompts, self.trainer.recovering("generate", lambda: self._generate(rows, prompts, step))

    def close(self) -> None:
        if self.pool is not None:  # actors are killed next, which ends a generation in flight
            self.pool.shutdown(wait=False, cancel_futures=True)


def logprob_gap(batch: Batch):
    """|rollout − learner| log-prob of every sampled token [B, R]: the engine's and the learner's
    view of the same tokens; numerical noise when both hold the same weights."""
    return (batch["rollout_logprobs"] - batch["old_logprobs"]).abs()


class LogprobGapError(RuntimeError):
    """The rollout engines' log-probs disagree with the learner's on the same weights (ppo.logprob_gap_action=stop)."""
