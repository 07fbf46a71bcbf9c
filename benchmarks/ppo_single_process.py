"""rlhf_ray's PPO step as a plain single-process loop: no Ray, no DeepSpeed (issue 6).

The same models, prompts, per-request seeds, batch layout, forward passes, losses, optimiser settings
and minibatch / micro-batch / epoch schedule as `PPOTrainer.step` (rlhf_ray/trainers/ppo.py), run one
after another in this process: vLLM in-process as the rollout role builds it, the reference, policy and
critic as plain torch modules, torch AdamW stepped as DeepSpeed ZeRO-0 steps it, and the new weights
pushed into vLLM with `load_weights_into_vllm`. The maths is imported from rlhf_ray, so rlhf_ray's
step time over this loop's is the price of the orchestration (actors, object store, DeepSpeed).

    .venv/bin/python benchmarks/ppo_single_process.py [--config configs/ppo_arithmetic.yaml] \
        [--steps 4] [--warmup 1] [--generate-chunks 1] [--threads N] [key=value ...]

`run_single_process(cfg, steps, warmup)` returns one dict per timed step under rlhf_ray's own metric
names (`time/generate`, `time/score`, `time/advantages`, `time/update`, `time/sync`, `time/step`,
`reward/mean`, `kl/mean`, ...), so its rows line up with a run's metrics.jsonl.

Where it cannot do the same as rlhf_ray's step:
- the score passes (reference, policy, critic, reward) and the two updates (policy, critic) run one
  after the other here; rlhf_ray runs them side by side in separate actors;
- generation goes to vLLM in one call by default; rlhf_ray's dispatch sends `4 x rollout.num_actors`
  chunks, one at a time per engine (`--generate-chunks 4` does the same here with one engine);
- the weights go to vLLM in one call straight from the parameters; rlhf_ray sends buckets of about
  `sync.bucket_mb` through the object store (a view on the learner, a copy on put);
- it is always synchronous: `ppo.async_rollout` (generating step n+1 during step n) is ignored;
- vLLM, the three torch models and the optimisers share one process and one set of torch threads
  (torch's default, all cores, unless --threads); each rlhf_ray actor has its own, and Ray sets
  OMP_NUM_THREADS to an actor's whole CPUs (1 for the default 0.5) unless `<role>.torch_threads` is set.
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

import torch

from rlhf_ray.algos import AdaptiveKLController, FixedKLController, masked_mean
from rlhf_ray.algos.objectives import policy_objective, value_objective
from rlhf_ray.config import Config, TrainableRole
from rlhf_ray.config.loading import load_config
from rlhf_ray.data.batch import Batch, batch_size, build_batch, map_micro_batches, micro_batches, select
from rlhf_ray.models.forward import ValueModel, response_logprobs, response_values
from rlhf_ray.runs.tracking import StageTimer
from rlhf_ray.trainers.estimate import penalize_and_estimate

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from common import machine, table  # noqa: E402

STEP_SEED = 1_000_003  # PPOTrainer.step samples step s with seed s * STEP_SEED


class Trainable:
    """A module with its torch AdamW, stepped as rlhf_ray's DeepSpeedWorker steps it on one rank with
    ZeRO 0: each micro-batch's loss divided by the accumulation steps (DeepSpeed's scaling), gradients
    clipped to max_grad_norm, one optimiser step per minibatch, minibatches shuffled per epoch with
    rank 0's generator."""

    def __init__(self, module: torch.nn.Module, role: TrainableRole, cfg: Config):
        if role.gradient_checkpointing:
            module.gradient_checkpointing_enable()
        self.module, self.role, self.cfg = module, role, cfg
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.opt = torch.optim.AdamW(self.params, lr=role.lr, betas=tuple(role.adam_betas),
                                     weight_decay=role.weight_decay)
        self.updates = 0

    @torch.no_grad()
    def forward_eval(self, batch: Batch, fn, per_token: bool) -> torch.Tensor:
        self.module.eval()
        return map_micro_batches(batch, self.role.micro_batch_samples_per_actor, fn, per_token)

    def train_epochs(self, batch: Batch, loss_fn, epochs: int) -> dict[str, float]:
        self.module.train()
        per_step, micro = self.cfg.optimizer_batch_global, self.role.micro_batch_samples_per_actor
        accum = per_step // micro
        g = torch.Generator().manual_seed(self.cfg.trainer.seed + 7919 * self.updates)
        sums, count, grad_norm = {}, 0, 0.0
        for _ in range(epochs):
            order = torch.randperm(batch_size(batch), generator=g)
            for start in range(0, len(order), per_step):
                for mb in micro_batches(select(batch, order[start:start + per_step]), micro):
                    loss, metrics = loss_fn(mb)
                    (loss / accum).backward()
                    for k, v in metrics.items():
                        sums[k] = sums.get(k, 0.0) + float(v)
                    count += 1
                grad_norm = float(torch.nn.utils.clip_grad_norm_(self.params, self.role.max_grad_norm))
                self.opt.step()
                self.opt.zero_grad(set_to_none=True)
        self.updates += 1
        return {**{k: v / max(count, 1) for k, v in sums.items()}, "grad_norm": grad_norm}


class SingleProcessPPO:
    """Everything PPOTrainer's actors hold, in this process; ``step(s)`` is PPOTrainer.step(s)."""

    def __init__(self, cfg: Config):
        from rlhf_ray.data.prompts import PromptSampler, load_task
        from rlhf_ray.models.loading import load_causal_lm, load_tokenizer, resolve_model_path
        from rlhf_ray.rewards.functions import import_reward_function
        from rlhf_ray.roles.base import seed_everything

        if cfg.algorithm != "ppo" or cfg.reward.kind != "rule" or cfg.rollout.backend != "vllm":
            raise ValueError("the single-process loop prices PPO with a rule reward and vLLM rollouts; got "
                             f"algorithm={cfg.algorithm} reward.kind={cfg.reward.kind} "
                             f"rollout.backend={cfg.rollout.backend}")
        self.cfg = cfg
        path = resolve_model_path(cfg.model.path)
        self.tokenizer = load_tokenizer(path)
        self.train_set, _ = load_task(cfg, self.tokenizer)
        self.sampler = PromptSampler(len(self.train_set.ids), cfg.trainer.seed)
        self.reward_fn = import_reward_function(cfg.reward.function)
        k = cfg.ppo.kl
        self.kl_ctl = AdaptiveKLController(k.coef, k.target, k.horizon) if k.target else FixedKLController(k.coef)

        self.threads_before_vllm = torch.get_num_threads()
        self.llm = make_llm(cfg, path)
        self.threads = torch.get_num_threads()
        self.reference = load_causal_lm(resolve_model_path(cfg.reference.model_path or cfg.model.path),
                                        torch.float32).eval().requires_grad_(False)
        self.policy = Trainable(load_causal_lm(path, torch.float32), cfg.learner, cfg)
        # The critic's head is drawn from the global RNG; the critic actor seeds it first (Worker.__init__).
        seed_everything(cfg.trainer.seed)
        self.critic = Trainable(ValueModel.from_pretrained(resolve_model_path(cfg.critic.model_path or cfg.model.path)),
                                cfg.critic, cfg)

    def generate(self, prompt_ids: list[list[int]], seed: int, chunks: int) -> dict:
        """Request i gets seed + i, as rlhf_ray's dispatch seeds by global prompt index."""
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        rc = self.cfg.rollout
        size = max(1, math.ceil(len(prompt_ids) / chunks))
        ids, logps, reasons = [], [], []
        for start in range(0, len(prompt_ids), size):
            part = prompt_ids[start:start + size]
            params = [SamplingParams(n=1, temperature=rc.temperature, top_p=rc.top_p, max_tokens=rc.max_new_tokens,
                                     logprobs=0, seed=seed + start + i) for i in range(len(part))]
            for o in self.llm.generate([TokensPrompt(prompt_token_ids=p) for p in part], params, use_tqdm=False):
                c = o.outputs[0]
                ids.append(list(c.token_ids))
                logps.append([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)])
                reasons.append(c.finish_reason)
        texts = self.tokenizer.batch_decode(ids, skip_special_tokens=True)
        return {"response_ids": ids, "logprobs": logps, "finish_reasons": reasons, "texts": texts}

    def score(self, batch: Batch, rows: list[int], texts: list[str]) -> torch.Tensor:
        """Fills ref_logprobs, old_logprobs and old_values; returns the rule reward's scores."""
        from rlhf_ray.rewards.functions import check_scores

        cfg, t = self.cfg, self.cfg.rollout.temperature
        with torch.no_grad():
            batch["ref_logprobs"] = map_micro_batches(batch, cfg.reference.micro_batch_samples_per_actor,
                                                      lambda mb: response_logprobs(self.reference, mb, t)[0], True)
        batch["old_logprobs"] = self.policy.forward_eval(
            batch, lambda mb: response_logprobs(self.policy.module, mb, t)[0], per_token=True)
        batch["old_values"] = self.critic.forward_eval(batch, lambda mb: response_values(self.critic.module, mb),
                                                       per_token=True)
        data = [self.train_set.rows[i] for i in rows]
        scores = self.reward_fn([r["prompt"] for r in data], texts, [r["answer"] for r in data])
        return check_scores(scores, len(texts), f"reward.function {cfg.reward.function}")

    def train_policy(self, batch: Batch, kl_coef: float) -> dict[str, float]:
        """PolicyLearner.train_policy's loss on the plain module (each micro-batch its own mean: the
        step normaliser's all-reduce has no counterpart in one process, and costs nothing measurable)."""
        ppo, t = self.cfg.ppo, self.cfg.rollout.temperature

        def loss_fn(mb: Batch):
            logp, entropy = response_logprobs(self.policy.module, mb, t, with_entropy=True)
            return policy_objective(ppo, self.cfg.spec.objective, self.cfg.loss_agg, logp, entropy, mb, kl_coef)

        return {f"learner/{k}": v for k, v in self.policy.train_epochs(batch, loss_fn, ppo.epochs).items()}

    def train_critic(self, batch: Batch) -> dict[str, float]:
        """Critic.train_values's loss on the plain module."""
        ppo = self.cfg.ppo

        def loss_fn(mb: Batch):
            return value_objective(ppo, response_values(self.critic.module, mb), mb)

        return {f"critic/{k}": v for k, v in self.critic.train_epochs(batch, loss_fn, ppo.epochs).items()}

    def step(self, step: int, generate_chunks: int = 1) -> dict[str, float]:
        from rlhf_ray.sync.vllm_weights import load_weights_into_vllm

        ppo, timer = self.cfg.ppo, StageTimer()
        start = time.perf_counter()
        with timer("generate"):  # the n samples of a prompt are consecutive rows, as in PPOTrainer
            rows = [i for i in self.sampler.next(ppo.prompts_per_step_global) for _ in range(ppo.samples_per_prompt)]
            prompts = [self.train_set.ids[i] for i in rows]
            gen = self.generate(prompts, step * STEP_SEED, generate_chunks)
            batch = build_batch(prompts, gen["response_ids"], self.tokenizer.pad_token_id, gen["logprobs"])
        with timer("score"):
            scores = self.score(batch, rows, gen["texts"])
        with timer("advantages"):
            beta = self.kl_ctl.value
            kl, seq_kl = penalize_and_estimate(self.cfg, batch, scores, beta)
        with timer("update"):
            metrics = {**self.train_policy(batch, beta), **self.train_critic(batch)}
        with timer("sync"):  # named_parameters lists a tied head once, as the learner sends it
            load_weights_into_vllm(self.llm, list(self.policy.module.named_parameters()))
        self.kl_ctl.update(float(seq_kl.mean()), len(rows))
        gap = (batch["rollout_logprobs"] - batch["old_logprobs"]).abs()
        metrics.update(timer.seconds)
        metrics.update({
            "reward/mean": float(scores.mean()), "kl/mean": float(seq_kl.mean()), "kl/beta": beta,
            "response/length_mean": float(batch["response_lengths"].float().mean()),
            # vLLM and the policy score the same tokens with the same weights: a gap means a broken sync.
            "check/logprob_gap_mean": float(masked_mean(gap, batch["response_mask"])),
        })
        metrics["time/step"] = time.perf_counter() - start
        return metrics


def make_llm(cfg: Config, path: str):
    """vLLM as rlhf_ray.roles.rollout builds it for rank 0: in-process engine, same KV cache and flags."""
    rc, mc = cfg.rollout, cfg.model
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(rc.cpu_kv_cache_gib))))
    from vllm import LLM

    return LLM(model=path, dtype=mc.dtype, enforce_eager=True, seed=cfg.trainer.seed,
               max_model_len=mc.max_prompt_tokens + rc.max_new_tokens, tensor_parallel_size=rc.tensor_parallel_size,
               gpu_memory_utilization=rc.gpu_memory_utilization, enable_prefix_caching=rc.enable_prefix_caching,
               disable_log_stats=True, logprobs_mode="processed_logprobs")


def run_single_process(cfg: Config, steps: int, warmup: int, generate_chunks: int = 1,
                       loop: SingleProcessPPO | None = None) -> list[dict]:
    """Runs steps 1 .. warmup + steps (the numbering, hence the sampling seeds, of an rlhf_ray run) and
    returns the metrics of the last ``steps``, each with its "step" number."""
    loop = loop or SingleProcessPPO(cfg)
    out = []
    for s in range(1, warmup + steps + 1):
        m = loop.step(s, generate_chunks)
        if s > warmup:
            out.append({"step": s, **m})
    return out


STAGES = ("generate", "score", "advantages", "update", "sync", "step")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default="configs/ppo_arithmetic.yaml")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--generate-chunks", type=int, default=1,
                        help="vLLM calls per generation (rlhf_ray's dispatch makes 4 per engine)")
    parser.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    parser.add_argument("overrides", nargs="*", help="config overrides, key=value")
    args = parser.parse_args()
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")  # as rlhf_ray's actors run
    if args.threads:  # before vLLM starts: its CPU worker turns torch.set_num_threads into a no-op
        torch.set_num_threads(args.threads)

    cfg = load_config(args.config, args.overrides)
    loop = SingleProcessPPO(cfg)
    rows = run_single_process(cfg, args.steps, args.warmup, args.generate_chunks, loop)
    ppo = cfg.ppo
    print(f"machine: {machine()}\nmodel: {cfg.model.path}; {ppo.prompts_per_step_global} prompts x "
          f"{ppo.samples_per_prompt} samples, max {cfg.rollout.max_new_tokens} new tokens, {ppo.epochs} epoch(s), "
          f"minibatch {ppo.minibatch_samples_global}; torch threads {loop.threads_before_vllm} before vLLM, "
          f"{loop.threads} after; {args.generate_chunks} vLLM call(s) per generation; {args.warmup} warm-up step(s)\n")
    shown = [{"step": r["step"], **{f"{s} s": r[f"time/{s}"] for s in STAGES}, "reward": r["reward/mean"],
              "kl": r["kl/mean"], "lp_gap": r["check/logprob_gap_mean"]} for r in rows]
    mean = {k: sum(r[k] for r in shown) / len(shown) for k in shown[0] if k != "step"}
    print(table(shown + [{"step": "mean", **mean}], "single-process PPO step, seconds per stage"))


if __name__ == "__main__":
    main()
