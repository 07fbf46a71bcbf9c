"""Environment actors: each holds the Environment objects of many trajectories at once.

A trajectory's environment lives on one actor from its reset to its close; the rollout engine that
drives the trajectory calls ``reset``/``step``/``close`` there by key (rlhf_ray.envs.loop). Calls run in
threads (``env.max_concurrency``), so one slow environment does not hold up the others on its actor.
Results are checked here (rlhf_ray.envs.base.check_observation): an environment that returns
garbage fails its call with an error naming its class, never a confusing error in the engine.
"""

from __future__ import annotations

import threading
from dataclasses import asdict

from rlhf_ray.config import Config
from rlhf_ray.envs.base import Environment, check_observation
from rlhf_ray.envs.factory import make_environment
from rlhf_ray.roles.base import Worker


class EnvHost(Worker):
    role = "env"

    @staticmethod
    def actor_options(cfg: Config) -> dict:
        return {"max_concurrency": cfg.env.max_concurrency}

    def init_model(self, model_path: None) -> int:
        """Environments load no model; every trajectory of the actor's previous life is forgotten."""
        self.envs: dict[str, Environment] = {}
        self.lock = threading.Lock()
        return 0

    def reset(self, key: str, row: dict) -> dict:
        """A new environment for trajectory ``key``; returns the strings that end its policy turns."""
        env = make_environment(self.cfg.env)
        env.reset(row)
        with self.lock:
            self.envs[key] = env
        return {"stop": list(env.stop)}

    def step(self, key: str, action: str) -> dict:
        """The environment's answer to the turn ``action``, as a plain dict of Observation's fields."""
        env = self.envs[key]
        return asdict(check_observation(env.step(action), type(env).__name__))

    def close(self, keys: list[str]) -> int:
        with self.lock:
            envs = [self.envs.pop(k) for k in keys if k in self.envs]
        for env in envs:
            env.close()
        return len(self.envs)

    def open_count(self) -> int:
        return len(self.envs)
