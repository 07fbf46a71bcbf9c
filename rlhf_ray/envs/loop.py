"""Multi-turn rollouts: trajectories that alternate policy turns with environment observations.

Token-exact. The ids an engine generated are kept as generated; an observation is rendered and
tokenized once (rlhf_ray.envs.format) and appended; the conversation is never re-tokenized, so the
learner scores exactly the tokens the engine sampled (re-tokenizing a conversation can merge or split
tokens at turn boundaries: the field's known source of train/inference log-prob mismatch). A
trajectory's response is [turn 1 | observation 1 | turn 2 | ...]; its mask is 1 on the policy's own
tokens only, so observations are never trained on.

Continuous. With ``env.scheduling=continuous`` a trajectory's next turn goes to the engine as soon as
its environment answers, while the engine goes on generating the others: the engine idles only when
every unfinished trajectory waits for its environment. ``lockstep`` (turn k of all, then every
environment call, then turn k+1) is the baseline the benchmark compares.

Failures. Every environment call has a deadline (``env.call_timeout_s``) and ``env.retries``; after
them the trajectory ends scored ``env.failure_reward`` (``env.on_failure=end``) or the call raises
EnvCallError naming the actor and the prompt. A lost environment actor is not retried here: the
error reaches the controller, which restarts the actor and runs the stage again.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field

import ray

from rlhf_ray.config import EnvConfig
from rlhf_ray.envs.base import Observation
from rlhf_ray.envs.format import TurnFormat


class EnvCallError(RuntimeError):
    """An environment call failed after its retries (env.on_failure=raise)."""


@dataclass
class TurnOutput:
    key: str
    token_ids: list[int]
    logprobs: list[float]
    finish_reason: str  # "stop" (end of turn or a stop string) or "length"


@dataclass
class Trajectory:
    key: str
    index: int  # the global prompt index: picks the environment actor and seeds the turns' sampling
    row: dict
    prompt_ids: list[int]
    ids: list[int] = field(default_factory=list)  # the response: policy and observation tokens
    mask: list[int] = field(default_factory=list)  # 1 where the policy generated the token
    logprobs: list[float] = field(default_factory=list)  # the engine's; 0 at observation tokens
    stop: tuple[str, ...] = ()
    turns: int = 0
    reward: float = 0.0  # sum of the environment's rewards
    finish: str = ""  # done | max_turns | max_tokens | env_failure
    last_text: str = ""  # the final policy turn, what a reward function scores
    ended_with_eos: bool = False
    error: str = ""  # why an environment call failed for good (env.on_failure=end)
    counters: Counter = field(default_factory=Counter)

    def add_turn(self, out: TurnOutput, eos_ids: set[int]) -> None:
        self.ids += out.token_ids
        self.mask += [1] * len(out.token_ids)
        self.logprobs += out.logprobs
        self.turns += 1
        self.ended_with_eos = bool(out.token_ids) and out.token_ids[-1] in eos_ids

    def add_observation(self, ids: list[int]) -> None:
        self.ids += ids
        self.mask += [0] * len(ids)
        self.logprobs += [0.0] * len(ids)
        self.counters["observation_tokens"] += len(ids)

    def result(self) -> dict:
        return {"response_ids": self.ids, "policy_mask": self.mask, "logprobs": self.logprobs,
                "finish_reason": self.finish, "text": self.last_text, "env_reward": self.reward,
                "failed": self.finish == "env_failure", "error": self.error, "turns": self.turns,
                "counters": dict(self.counters)}


@dataclass
class _Call:
    traj: Trajectory
    kind: str  # reset | step
    arg: object
    attempt: int
    deadline: float


class EnvCalls:
    """Environment calls in flight, each with a deadline and retries. ``poll`` returns the answered
    ones as (trajectory, kind, result); a call that failed for good comes back as an Exception."""

    def __init__(self, actors: list, ec: EnvConfig):
        self.actors, self.ec = actors, ec
        self.pending: dict[ray.ObjectRef, _Call] = {}

    def actor(self, traj: Trajectory):
        return self.actors[traj.index % len(self.actors)]

    def send(self, traj: Trajectory, kind: str, arg, attempt: int = 0) -> None:
        actor = self.actor(traj)
        ref = actor.reset.remote(traj.key, arg) if kind == "reset" else actor.step.remote(traj.key, arg)
        self.pending[ref] = _Call(traj, kind, arg, attempt, time.monotonic() + self.ec.call_timeout_s)

    def poll(self, timeout: float) -> list[tuple[Trajectory, str, object]]:
        if not self.pending:
            return []
        wait = max(0.0, min(timeout, min(c.deadline for c in self.pending.values()) - time.monotonic()))
        ready, _ = ray.wait(list(self.pending), num_returns=len(self.pending), timeout=wait)
        out = []
        for ref in ready:
            call = self.pending.pop(ref)
            try:
                out.append((call.traj, call.kind, ray.get(ref)))
            except ray.exceptions.RayActorError:
                raise  # the actor is gone: the controller restarts it and runs the stage again
            except ray.exceptions.RayTaskError as e:
                call.traj.counters["env_errors"] += 1
                out += self._retry_or_fail(call, e.cause if e.cause is not None else e)
        now = time.monotonic()
        for ref, call in list(self.pending.items()):
            if now >= call.deadline:
                del self.pending[ref]
                ray.cancel(ref)  # the call may run on: its answer is never read
                call.traj.counters["env_timeouts"] += 1
                out += self._retry_or_fail(call, TimeoutError(f"no answer within env.call_timeout_s={self.ec.call_timeout_s:g}s"))
        return out

    def _retry_or_fail(self, call: _Call, error: BaseException) -> list:
        if call.attempt < self.ec.retries:
            self.send(call.traj, call.kind, call.arg, call.attempt + 1)
            return []
        t = call.traj
        where = f"env-{t.index % len(self.actors)}"
        msg = (f"environment {call.kind} of trajectory {t.key} (prompt {t.row.get('prompt', '')!r:.80}) on {where} "
               f"failed after {call.attempt + 1} attempt(s): {type(error).__name__}: {error}")
        if self.ec.on_failure == "raise":
            raise EnvCallError(msg)
        return [(t, call.kind, EnvCallError(msg))]

    def close(self, trajs: list[Trajectory]) -> None:
        """Frees the trajectories' environments (fire and forget: nothing waits on it)."""
        by_actor: dict[int, list[str]] = {}
        for t in trajs:
            by_actor.setdefault(t.index % len(self.actors), []).append(t.key)
        for i, keys in by_actor.items():
            self.actors[i].close.remote(keys)


class TurnLoop:
    """Drives one batch of trajectories to their ends on one engine (an adapter with ``submit``,
    ``step`` and ``busy``; rlhf_ray.envs.engines) and the environment actors."""

    def __init__(self, engine, env_actors: list, fmt: TurnFormat, tokenizer, ec: EnvConfig, max_new_tokens: int):
        self.engine, self.fmt, self.tokenizer, self.ec = engine, fmt, tokenizer, ec
        self.max_new_tokens = max_new_tokens
        self.calls = EnvCalls(env_actors, ec)
        self.eos_ids = set(tokenizer.all_special_ids) if tokenizer.eos_token_id is None else {tokenizer.eos_token_id}
        self.queue: list[Trajectory] = []  # trajectories whose next turn is ready to generate

    def run(self, trajs: list[Trajectory]) -> dict[str, float]:
        """Every trajectory to its end; returns the engine's busy and idle seconds."""
        start, busy, idle = time.perf_counter(), 0.0, 0.0
        by_key = {t.key: t for t in trajs}
        for t in trajs:
            self.calls.send(t, "reset", t.row)
        try:
            while any(not t.finish for t in trajs):
                if self.ec.scheduling == "continuous" or not (self.engine.busy or self.calls.pending):
                    self._submit_queued()
                if self.engine.busy:
                    s = time.perf_counter()
                    outs = self.engine.step()
                    busy += time.perf_counter() - s
                    for out in outs:
                        self._after_turn(by_key[out.key.rsplit(":", 1)[0]], out)
                    answered = self.calls.poll(0.0)
                elif self.calls.pending:
                    s = time.perf_counter()
                    answered = self.calls.poll(1.0)
                    idle += time.perf_counter() - s
                else:  # a bug, not a slow environment: never spin silently
                    stuck = [t.key for t in trajs if not t.finish]
                    raise RuntimeError(f"trajectories {stuck[:5]} are neither generating nor waiting for an environment")
                for t, kind, result in answered:
                    self._after_env(t, kind, result)
        except BaseException:
            self.engine.abort()  # the engine's next generation must not meet this one's turns
            raise
        finally:
            self.calls.close(trajs)
        return {"engine_busy_s": busy, "engine_idle_s": idle, "wall_s": time.perf_counter() - start}

    def _submit_queued(self) -> None:
        for t in self.queue:
            budget = self.ec.max_total_tokens - len(t.ids)
            self.engine.submit(f"{t.key}:{t.turns}", t.prompt_ids + t.ids, min(self.max_new_tokens, budget), t.stop,
                               t.index + 7919 * t.turns)
        self.queue = []

    def _after_turn(self, t: Trajectory, out: TurnOutput) -> None:
        t.add_turn(out, self.eos_ids)
        t.last_text = self.tokenizer.decode(out.token_ids, skip_special_tokens=True)
        if out.finish_reason == "length" and len(t.ids) >= self.ec.max_total_tokens:
            t.finish = "max_tokens"  # the budget ran out inside the turn: nothing to answer
            return
        self.calls.send(t, "step", t.last_text)

    def _after_env(self, t: Trajectory, kind: str, result) -> None:
        if isinstance(result, Exception):
            t.finish, t.error = "env_failure", str(result)
            return
        if kind == "reset":
            t.stop = tuple(result["stop"])
            self.queue.append(t)
            return
        obs = Observation(**result)
        t.reward += obs.reward
        t.counters.update(obs.info)
        if obs.done:
            t.finish = "done"
            return
        if t.turns >= self.ec.max_turns:
            t.finish = "max_turns"
            return
        ids = self.fmt.observation_ids(self._clip(obs.all_messages(), t), t.ended_with_eos)
        if len(t.ids) + len(ids) >= self.ec.max_total_tokens:  # no room left for a policy token
            t.finish = "max_tokens"
            return
        t.add_observation(ids)
        self.queue.append(t)

    def _clip(self, messages: list[dict], t: Trajectory) -> list[dict]:
        """Each message's content cut to env.max_observation_tokens tokens (a tool that prints a book)."""
        limit, out = self.ec.max_observation_tokens, []
        for m in messages:
            ids = self.tokenizer(m["content"], add_special_tokens=False)["input_ids"]
            if len(ids) > limit:
                t.counters["observations_cut"] += 1
                m = {**m, "content": self.tokenizer.decode(ids[:limit]) + " [cut]"}
            out.append(m)
        return out
