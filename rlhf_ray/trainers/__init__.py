"""Controllers: one per algorithm family, all driving the same role actors.

`run(cfg)` picks the controller for `cfg.algorithm`; each controller module has a
`run(cfg) -> summary` function, so adding a family is one module and one line here.
"""

from __future__ import annotations

import importlib

from rlhf_ray.config import ONLINE_ALGORITHMS, PREFERENCE_ALGORITHMS, Config

CONTROLLERS = {
    **{a: "rlhf_ray.trainers.ppo" for a in ONLINE_ALGORITHMS},
    **{a: "rlhf_ray.trainers.offline" for a in PREFERENCE_ALGORITHMS},
    "sft": "rlhf_ray.trainers.offline",
    "reward_model": "rlhf_ray.trainers.reward_model",
    "raft": "rlhf_ray.trainers.raft",
}


def run(cfg: Config) -> dict:
    """Runs the job; returns its summary ({"eval": {step: {metric: value}}, ...})."""
    return importlib.import_module(CONTROLLERS[cfg.algorithm]).run(cfg)
