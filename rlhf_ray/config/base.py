"""The base of every config section (rlhf_ray.config.*): strict, so an unknown
key, a wrong type or a number that is not finite (``.inf``, ``.nan``) is an error naming it."""

from __future__ import annotations

from pydantic import BaseModel, ConfigDict


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True, allow_inf_nan=False)


class ConfigError(ValueError):
    """A config problem, phrased for the user: names the key and what to do."""
