"""The preflight of ``env.*``: the environment (or the tool environment) built on the driver, its
interface checked, and one dry episode opened on a training row, before any actor starts.

    env.environment / env.tools → imported, built (env.kwargs), every tool's JSON schema (ToolEnvironment)
      → reset and step take one argument, stop is strings → reset(a training row) gives None or messages
      → system_prompt() is text or None → step("") (an empty turn, as a policy may write) gives an
        Observation (rlhf_ray.envs.base.check_observation), within env.call_timeout_s, with env.retries
        retries as the environment actors allow

Without it an environment whose ``step`` returns the wrong type only fails inside the environment
actors, where env.on_failure=end scores every trajectory env.failure_reward and the run goes on.
"""

from __future__ import annotations

import inspect
import threading

from rlhf_ray.config import Config
from rlhf_ray.envs.base import EnvProtocolError, check_observation
from rlhf_ray.envs.factory import make_environment

DRY_ACTION = ""  # the turn of the dry step: nothing written, which any environment must answer


def check_env_dry(cfg: Config, row: dict | None) -> None:
    """Raises ValueError naming the env key, the class and what is wrong; nothing when env.* is off."""
    ec = cfg.env
    if not ec.enabled:
        return
    key = f"env.tools={ec.tools}" if ec.tools else f"env.environment={ec.environment!r}"
    env = make_environment(ec)  # import, subclass, env.kwargs, every tool's schema: errors name the key
    name = type(env).__name__
    for method in ("reset", "step"):
        try:
            inspect.signature(getattr(env, method)).bind(row or {})
        except TypeError:
            raise ValueError(f"{key}: {name}.{method}{inspect.signature(getattr(env, method))} must take one "
                             f"argument ({'the prompt row' if method == 'reset' else 'the turn text'})") from None
    if isinstance(env.stop, str) or not all(isinstance(s, str) for s in env.stop):
        raise ValueError(f"{key}: {name}.stop must be a tuple of strings, got {env.stop!r:.80}")
    row = dict(row or {"prompt": "", "answer": ""})
    try:
        first = _timed(lambda: env.reset(row), ec.call_timeout_s, f"{key}: a dry {name}.reset(a training row)")
        if first is not None and not (isinstance(first, list) and all(_is_message(m) for m in first)):
            raise ValueError(f"{key}: {name}.reset returned {first!r:.80}; expected None or a list of "
                             "{'role': str, 'content': str} messages")
        prompt = env.system_prompt()
        if prompt is not None and not isinstance(prompt, str):
            raise ValueError(f"{key}: {name}.system_prompt() returned {type(prompt).__name__}, not a string or None")
        obs = _retried(lambda: env.step(DRY_ACTION), ec.retries, ec.call_timeout_s,
                       f"{key}: a dry {name}.step({DRY_ACTION!r}) after reset(a training row)")
        try:
            check_observation(obs, name)
        except EnvProtocolError as e:
            raise ValueError(f"{key}: a dry step after reset(a training row): {e}") from None
    finally:
        try:
            env.close()
        except Exception:  # noqa: BLE001 - close is best effort, as the actors treat it
            pass


def _is_message(m) -> bool:
    return isinstance(m, dict) and isinstance(m.get("role"), str) and isinstance(m.get("content"), str)


def _retried(fn, retries: int, timeout_s: float, what: str):
    for attempt in range(retries + 1):
        try:
            return _timed(fn, timeout_s, what)
        except ValueError:
            if attempt == retries:
                raise


def _timed(fn, timeout_s: float, what: str):
    """fn() in a daemon thread, within ``timeout_s``; its exception as a ValueError naming ``what``."""
    out: dict = {}

    def call():
        try:
            out["value"] = fn()
        except Exception as e:  # noqa: BLE001 - a user's environment can raise anything; named below
            out["error"] = e

    thread = threading.Thread(target=call, daemon=True, name="env-preflight")
    thread.start()
    thread.join(timeout_s)
    if thread.is_alive():
        raise ValueError(f"{what} gave no answer within env.call_timeout_s={timeout_s:g}s")
    if "error" in out:
        e = out["error"]
        raise ValueError(f"{what} raised {type(e).__name__}: {e}")
    return out.get("value")
