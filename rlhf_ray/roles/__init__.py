"""The RLHF roles (and the environment actors of multi-turn rollouts), each a plain class that WorkerGroup turns into Ray actors."""

from rlhf_ray.roles.critic import Critic
from rlhf_ray.roles.env import EnvHost
from rlhf_ray.roles.learner import PolicyLearner
from rlhf_ray.roles.reference import Reference
from rlhf_ray.roles.reward import Reward
from rlhf_ray.roles.rollout import Rollout

__all__ = ["Critic", "EnvHost", "PolicyLearner", "Reference", "Reward", "Rollout"]
