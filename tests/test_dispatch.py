"""Rollout load balancing: least outstanding work, results in order, shares scale with engine count."""

from __future__ import annotations

import time

import pytest

from rlhf_ray.cluster.dispatch import generate_balanced


def _engines(local_ray, n, delays=None):
    @local_ray.remote(num_cpus=0)
    class FakeEngine:  # beside the real-engine test below: lets one engine be slow on purpose
        def __init__(self, delay):
            self.delay = delay
            self.calls = []

        def call_sizes(self):
            return self.calls

        def generate(self, prompts, greedy, seed):
            self.calls.append(len(prompts))
            time.sleep(self.delay * len(prompts))
            return {"response_ids": [[p[0], seed + i] for i, p in enumerate(prompts)],
                    "logprobs": [[0.0, 0.0]] * len(prompts), "finish_reasons": ["stop"] * len(prompts), "version": 3}

    return [FakeEngine.remote((delays or [0.0] * n)[i]) for i in range(n)]


def test_order_and_global_seeds(local_ray):
    prompts = [[i] for i in range(37)]
    out = generate_balanced(_engines(local_ray, 3), prompts, greedy=False, seed=100)
    assert [r[0] for r in out["response_ids"]] == list(range(37))
    # request i is sampled with seed + i whichever engine served it
    assert [r[1] for r in out["response_ids"]] == [100 + i for i in range(37)]
    assert sum(out["served"]) == 37 and out["versions"] == [3]

    engine = _engines(local_ray, 1)
    one = generate_balanced(engine, prompts, greedy=False, seed=100)
    # one engine: no balancing to do, the whole step in one call (vLLM batches it all)
    assert local_ray.get(engine[0].call_sizes.remote()) == [37]
    assert [r[1] for r in one["response_ids"]] == [100 + i for i in range(37)]


def test_slow_engine_gets_less_work(local_ray):
    out = generate_balanced(_engines(local_ray, 2, delays=[0.0, 0.05]), [[i] for i in range(64)], False, 0,
                            chunks_per_engine=8, inflight=1)
    fast, slow = out["served"]
    assert fast > 2 * slow


@pytest.mark.parametrize("n_engines", [2, 4])
def test_doubling_real_engines_halves_each_share(local_ray, tiny_policy, n_engines):
    from rlhf_ray.cluster.groups import WorkerGroup
    from rlhf_ray.config.loading import load_config
    from rlhf_ray.roles import Rollout

    cfg = load_config(overrides=[f"model.path={tiny_policy}", "rollout.backend=hf", "rollout.max_new_tokens=4",
                                 f"rollout.num_actors={n_engines}", "rollout.num_cpus_per_actor=0.1"])
    group = WorkerGroup("rollout", Rollout, cfg, f"dispatch{n_engines}")
    try:
        group.get(group.call(Rollout.init_model, tiny_policy))
        # every chunk in flight at once: the split no longer depends on how busy the test machine is
        out = generate_balanced(group.actors, [[5, 6, 7]] * 64, greedy=True, seed=0, chunks_per_engine=4, inflight=4)
    finally:
        group.kill()
    assert len(out["response_ids"]) == 64
    assert out["served"] == [64 // n_engines] * n_engines
