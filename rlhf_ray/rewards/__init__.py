"""Rewards from outside a model: rule functions named by import path (functions), the HTTP client of a
remote reward service (client) and the reference server (server). The shipped task verifiers are in
rlhf_ray.tasks.rewards, where configs name them."""
