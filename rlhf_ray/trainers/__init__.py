"""Controllers: one per kind of loop, all driving the same role actors.

The algorithm's row (rlhf_ray.algorithms) names its controller; ``run(cfg)`` builds the run's
inputs, starts the controller's actors, fits and shuts them down however the loop ends.
"""

from __future__ import annotations

from rlhf_ray.config import Config
from rlhf_ray.trainers.controller import Controller
from rlhf_ray.trainers.iterative import IterativeDPOTrainer
from rlhf_ray.trainers.offline import OfflineTrainer
from rlhf_ray.trainers.ppo import PPOTrainer
from rlhf_ray.trainers.raft import RaftTrainer
from rlhf_ray.trainers.reward_model import RewardModelTrainer

CONTROLLERS: dict[str, type[Controller]] = {
    "online": PPOTrainer, "offline": OfflineTrainer, "reward_model": RewardModelTrainer, "raft": RaftTrainer,
    "iterative": IterativeDPOTrainer}


def controller_for(cfg: Config) -> Controller:
    """The inputs checked, then the actors started: a controller ready to ``fit``."""
    return CONTROLLERS[cfg.spec.controller].from_config(cfg)


def run(cfg: Config) -> dict:
    """Runs the job; returns its summary ({"eval": {step: {metric: value}}, ...})."""
    controller = controller_for(cfg)
    try:
        return controller.fit()
    finally:
        controller.shutdown()
