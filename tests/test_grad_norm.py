"""learner/grad_norm is the L2 norm of each optimiser step's whole gradient, before clipping, averaged
over the call's steps: the figure real DeepSpeed learners log (ZeRO 0 on one rank with 4 accumulated
micro-batches; ZeRO 2 and 3 over two ranks) equals sqrt(Σ g²) computed by hand in plain torch, for the
same tiny model, batch and PPO loss over the whole batch, stepped by torch's AdamW after the same clip.

Two PPO epochs give two optimiser steps with different gradients (the first step moves the weights),
and the clip sits below the gradient norm, so the test tells the mean of the two unclipped norms from
the last one, the first one, or a clipped one. AdamW's eps far above |g| keeps its update linear in g
(as in tests/test_loss_invariance_deepspeed.py): no element's update flips with rounding noise, so
the hand-made second step starts from the learners' weights.
"""

from __future__ import annotations

import math

import pytest
import torch

from conftest import tiny_overrides
from rlhf_ray.algos import Normalizer
from rlhf_ray.algos.objectives import policy_objective
from rlhf_ray.cluster.groups import WorkerGroup
from rlhf_ray.config.loading import load_config
from rlhf_ray.data.batch import build_batch
from rlhf_ray.models.forward import response_logprobs
from rlhf_ray.models.loading import load_causal_lm
from rlhf_ray.roles import PolicyLearner

RESPONSES = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14], [15]]  # unequal lengths: the token mean matters
PROMPTS = [[20, 21, 22], [23, 24], [25, 26, 27, 28], [29]]
CLIP = 0.05  # below the gradient norm of both steps (asserted)


def _config(policy, run_dir, ranks: int, stage: int):
    return load_config(overrides=tiny_overrides(
        policy, run_dir, "ppo.prompts_per_step_global=2", "ppo.samples_per_prompt=2", "ppo.minibatch_samples_global=4",
        f"learner.num_actors={ranks}", "learner.micro_batch_samples_per_actor=1", f"learner.zero_stage={stage}",
        "learner.lr=1e4", "learner.adam_eps=1e6", "learner.weight_decay=0", f"learner.max_grad_norm={CLIP}",
        "ppo.epochs=2", "ppo.tis_cap=null"))


def _by_hand(cfg, policy, batch) -> list[float]:
    """Each step's gradient norm: the loss over the whole batch, backward, sqrt(Σ g²), clip, AdamW."""
    model = load_causal_lm(policy, torch.float32).train()
    r = cfg.learner
    opt = torch.optim.AdamW(model.parameters(), lr=r.lr, betas=r.adam_betas, eps=r.adam_eps, weight_decay=r.weight_decay)
    norm = Normalizer.of(batch["response_mask"], horizon=cfg.rollout.max_new_tokens)
    norms = []
    for _ in range(cfg.ppo.epochs):
        opt.zero_grad()
        logp, entropy = response_logprobs(model, batch, cfg.rollout.temperature, with_entropy=True)
        loss, _ = policy_objective(cfg.ppo, cfg.spec.objective, cfg.ppo.loss_agg, logp, entropy, batch, 0.0, norm)
        loss.backward()
        grads = [p.grad for p in model.parameters() if p.grad is not None]
        total = math.sqrt(sum(float((g.double() ** 2).sum()) for g in grads))
        norms.append(total)
        coef = r.max_grad_norm / (total + 1e-6)  # DeepSpeed's clip (and torch's)
        if coef < 1:
            for g in grads:
                g.mul_(coef)
        opt.step()
    return norms


@pytest.mark.parametrize("ranks,stage", [(1, 0), (2, 2), pytest.param(2, 3, marks=pytest.mark.slow)])
def test_logged_grad_norm_is_the_mean_unclipped_norm_of_the_steps(local_ray, tiny_policy, tmp_path, ranks, stage):
    cfg = _config(tiny_policy, tmp_path, ranks, stage)
    batch = build_batch(PROMPTS, RESPONSES, pad_id=0)
    batch["advantages"] = torch.tensor([1.0, -2.0, 0.5, 3.0]).unsqueeze(-1) * batch["response_mask"]
    group = WorkerGroup("learner", PolicyLearner, cfg, f"grad-norm-{ranks}x{stage}")
    try:
        addr, port = group.get([group.actors[0].master_address.remote()])[0]
        group.get(group.call(PolicyLearner.setup_distributed, addr, port), "distributed setup")
        group.get(group.call(PolicyLearner.init_model, tiny_policy), "model load")
        batch["old_logprobs"] = group.gather_cat(group.map_batch(PolicyLearner.compute_logprobs, batch))
        logged = [m["learner/grad_norm"] for m in group.get(group.map_batch(PolicyLearner.train_policy, batch, 0.0))]
    finally:
        group.kill()
    norms = _by_hand(cfg, tiny_policy, batch)
    assert min(norms) > 2 * CLIP, "the clip must act, or a clipped norm could pass"
    assert abs(norms[1] - norms[0]) > 1e-3 * norms[0], "equal steps could not tell a mean from the last"
    want = sum(norms) / len(norms)
    print(f"ranks={ranks} zero={stage}: logged {logged}, by hand {norms} → mean {want}")
    for got in logged:  # every rank logs the same global figure
        assert got == pytest.approx(want, rel=1e-5)
