"""The same invariance as tests/test_loss_invariance.py, through real DeepSpeed learners on Ray: one
optimiser step of the PPO objective on a batch of unequal response lengths moves the weights the same
whether it runs as one micro-batch, four micro-batches, or two ranks × two micro-batches.

AdamW's first step is lr·g/(|g| + eps): with an eps far above |g| it is linear in the gradient g, so
equal updates mean equal gradients (a per-micro-batch mean would weigh the 1-token micro-batches as
much as the 7-token ones and move the weights elsewhere). Updates are compared through the learner's
log-probs of a fixed probe batch after the step.
"""

from __future__ import annotations

import pytest
import torch

from conftest import tiny_overrides
from rlhf_ray.cluster.groups import WorkerGroup
from rlhf_ray.config.loading import load_config
from rlhf_ray.data.batch import build_batch
from rlhf_ray.roles import PolicyLearner

RESPONSES = [[5, 6, 7, 8, 9, 10, 11], [12], [13, 14], [15]]  # 7, 1 | 2, 1 tokens: unequal micro-batches
PROMPTS = [[20, 21, 22], [23, 24], [25, 26, 27, 28], [29]]


def _learners(policy, run_dir, ranks: int, micro: int, *extra) -> WorkerGroup:
    cfg = load_config(overrides=tiny_overrides(
        policy, run_dir, "ppo.prompts_per_step_global=2", "ppo.samples_per_prompt=2", "ppo.minibatch_samples_global=4",
        f"learner.num_actors={ranks}", f"learner.micro_batch_samples_per_actor={micro}", "learner.lr=1e4",
        "learner.adam_eps=1e6", "learner.max_grad_norm=1e9", "ppo.tis_cap=null", "ppo.epochs=1", *extra))
    group = WorkerGroup("learner", PolicyLearner, cfg, f"invariance-{ranks}x{micro}")
    addr, port = group.get([group.actors[0].master_address.remote()])[0]
    group.get(group.call(PolicyLearner.setup_distributed, addr, port), "distributed setup")
    group.get(group.call(PolicyLearner.init_model, policy), "model load")
    return group


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_one_step_moves_the_weights_the_same_however_it_is_cut(local_ray, tiny_policy, tmp_path, agg):
    batch = build_batch(PROMPTS, RESPONSES, pad_id=0)
    probe = build_batch(PROMPTS, [[30, 31, 32]] * 4, pad_id=0)
    batch["advantages"] = torch.tensor([1.0, -2.0, 0.5, 3.0]).unsqueeze(-1) * batch["response_mask"]
    after, before = {}, None
    for ranks, micro in [(1, 4), (1, 1), (2, 1)]:
        group = _learners(tiny_policy, tmp_path / f"{ranks}x{micro}", ranks, micro, f"ppo.loss_agg={agg}")
        try:
            if before is None:
                before = group.gather_cat(group.map_batch(PolicyLearner.compute_logprobs, probe))
                batch["old_logprobs"] = group.gather_cat(group.map_batch(PolicyLearner.compute_logprobs, batch))
            group.get(group.map_batch(PolicyLearner.train_policy, batch, 0.0), "update")
            after[(ranks, micro)] = group.gather_cat(group.map_batch(PolicyLearner.compute_logprobs, probe))
        finally:
            group.kill()
    whole = after[(1, 4)]
    assert (whole - before).abs().max() > 1e-3, "the step must move the weights"
    for layout, got in after.items():
        assert torch.allclose(got, whole, atol=1e-5), (layout, (got - whole).abs().max())
