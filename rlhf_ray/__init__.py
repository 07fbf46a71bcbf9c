"""rlhf_ray: distributed RLHF on Ray."""
