"""Per-step statistics of multi-turn trajectories (the ``env/`` metrics; docs/metrics.md)."""

from __future__ import annotations

TRUNCATIONS = ("max_turns", "max_tokens")


def trajectory_metrics(gen: dict) -> dict[str, float]:
    """Means over the trajectories of one generation (``Rollout.generate_trajectories`` joined):
    turns, tool calls and errors, observation tokens, how they ended, and the engines' idle share."""
    n = len(gen["turns"])
    counters = gen["counters"]

    def mean_of(key: str) -> float:
        return sum(c.get(key, 0) for c in counters) / n

    out = {
        "env/turns_mean": sum(gen["turns"]) / n,
        "env/tool_calls_mean": mean_of("tool_calls"),
        "env/tool_call_rate": sum(c.get("tool_calls", 0) > 0 for c in counters) / n,
        "env/tool_errors_mean": mean_of("tool_errors"),
        "env/observation_tokens_mean": mean_of("observation_tokens"),
        "env/observations_cut": float(sum(c.get("observations_cut", 0) for c in counters)),
        "env/reward_mean": sum(gen["env_reward"]) / n,
        "env/failures": float(sum(gen["failed"])),
        "env/call_errors": float(sum(c.get("env_errors", 0) for c in counters)),
        "env/call_timeouts": float(sum(c.get("env_timeouts", 0) for c in counters)),
        "env/done_frac": sum(r == "done" for r in gen["finish_reasons"]) / n,
    }
    for reason in TRUNCATIONS:
        out[f"env/truncated_{reason}_frac"] = sum(r == reason for r in gen["finish_reasons"]) / n
    calls = gen.get("calls", [])
    busy, idle = sum(c.get("engine_busy_s", 0.0) for c in calls), sum(c.get("engine_idle_s", 0.0) for c in calls)
    if busy + idle > 0:
        out["env/engine_idle_s"] = idle
        out["env/engine_idle_frac"] = idle / (busy + idle)
    return out
