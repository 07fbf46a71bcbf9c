"""One preflight before any actor: every input a run reads, checked in seconds, each failure naming
the key or file (and line) and what to do.

    train  = config (rlhf_ray.config) → inputs (data rows, tokenizer, model folders, reward import;
             rlhf_ray.trainers.inputs) → preflight(cfg, inputs) → run directory claimed → Ray, actors
    submit = config → preflight_submit(cfg) → the Jobs API; the job's driver then runs `train`'s

What the preflight adds to loading the inputs: the weight files' headers of every model folder, one
call of the rule reward function with a real row, the environment variables the actors will read,
the resources a local Ray would be asked for against the machine's, the run directory (another
run's outputs, writable), and the checkpoint to resume (complete, unchanged since it was written,
fitting the config). It starts nothing and writes nothing.
"""

from __future__ import annotations

import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path

from rlhf_ray.cluster.hardware import local_gpus
from rlhf_ray.cluster.layout import check_feasible
from rlhf_ray.config import Config
from rlhf_ray.data.files import read_table
from rlhf_ray.models.headers import check_weights_readable, model_fingerprint
from rlhf_ray.envs.factory import make_environment
from rlhf_ray.planning.checks_envs import check_env_dry
from rlhf_ray.planning.checks_models import check_lora_targets, check_model_roles
from rlhf_ray.planning.plan import check_fit
from rlhf_ray.rewards.functions import check_scores, import_reward_function
from rlhf_ray.runs.checkpoint import resolve_resume, verify
from rlhf_ray.runs.rundir import check_resume, check_run_dir
from rlhf_ray.tasks.arithmetic import make_arithmetic_split


def check_sequence_length(cfg: Config, policy_path: str | None) -> None:
    """The longest sequence a rollout engine holds (prompt + response: one turn, or a multi-turn
    trajectory's budget) must fit the model's positions; vLLM would refuse it only after every actor started."""
    if not policy_path:
        return
    limit = json.loads((Path(policy_path) / "config.json").read_text()).get("max_position_embeddings")
    need = cfg.model.max_prompt_tokens + cfg.max_response_tokens
    if limit and need > limit:
        what = "env.max_total_tokens" if cfg.env.enabled else "rollout.max_new_tokens"
        raise ValueError(f"model.max_prompt_tokens + {what} = {need} tokens, more than the {limit} positions of "
                         f"{policy_path} (max_position_embeddings): lower one of them")


@dataclass
class Preflight:
    """What the checks found that the run goes on with."""

    resume_from: Path | None = None  # the checkpoint to continue from (trainer.resume resolved once, here)
    models: dict[str, str] = field(default_factory=dict)  # trained role → fingerprint of its starting model
    changed: list[str] = field(default_factory=list)  # settings that differ from the checkpoint's (allowed)
    warnings: list[str] = field(default_factory=list)


def preflight(cfg: Config, model_paths: dict[str, str | None], sample: dict | None = None,
              roles: tuple[str, ...] | None = None, echo=print) -> Preflight:
    """The checks of a run about to start here. ``model_paths``: role → folder (rlhf_ray.trainers.inputs);
    ``sample``: one training row {"prompt", "answer"} to call a rule reward function with; ``roles``:
    the roles that will start (default: the algorithm's)."""
    start = time.perf_counter()
    result = Preflight(warnings=[*cfg.unused_settings(), *check_environment(cfg)])
    for path in sorted({p for p in model_paths.values() if p}):
        check_weights_readable(path)
    check_model_roles(cfg, model_paths)
    check_lora_targets(cfg, model_paths, tuple(roles or cfg.roles))
    result.models = {r: model_fingerprint(model_paths[r]) for r in cfg.spec.trained_roles if model_paths.get(r)}
    check_reward_function(cfg, sample)
    check_env_dry(cfg, sample)
    check_sequence_length(cfg, model_paths.get("rollout"))
    check_local_resources(cfg, roles)
    result.resume_from = resolve_resume(cfg.trainer.resume, cfg.trainer.run_dir)
    if result.resume_from is not None:
        verify(result.resume_from)
        result.changed = check_resume(result.resume_from, cfg, result.models)
    check_run_dir(cfg, result.resume_from)
    _report(cfg, result, time.perf_counter() - start, echo)
    return result


def preflight_submit(cfg: Config, echo=print, cluster: str | None = None, gpu_gib: float | None = None,
                     fit: bool = True) -> list[str]:
    """The checks that hold on the submitting machine: data files (every row), the reward function
    (from the working directory that is uploaded), model folders that exist here, environment
    variables, and (``fit``) when a cluster file is named (``cluster`` or ray.cluster_config) the
    memory plan against it (rlhf_ray.planning.plan: DoesNotFit names what is over). The job's driver runs the
    whole preflight on the cluster before its actors start. Model folders here are checked for their
    role's architecture and LoRA targets too (rlhf_ray.planning.checks_models)."""
    for path in (cfg.task.train_file, cfg.task.eval_file, cfg.offline.train_file, cfg.offline.eval_file):
        if path and "://" not in path and not path.startswith("datasets:"):
            read_table(path)
    check_reward_function(cfg, None)
    if cfg.env.enabled:  # imported and built from the uploaded folder; the dry episode runs on the cluster
        make_environment(cfg.env)
    local = local_model_paths(cfg)
    for path in sorted(set(local.values())):
        check_weights_readable(path)
    check_model_roles(cfg, local)
    check_lora_targets(cfg, local, cfg.roles)
    warnings = [*cfg.unused_settings(), *check_environment(cfg, where="the cluster's nodes")]
    if fit and (cluster or cfg.ray.cluster_config):
        warnings += check_fit(cfg, cluster, gpu_gib).warnings
    for w in warnings:
        echo(f"[preflight] warning: {w}")
    return warnings


def local_model_paths(cfg: Config) -> dict[str, str]:
    """role → model folder of the roles whose folder is here (not a shipped model's name, nor a path
    that only the cluster has): what the submitting machine can check."""
    policy = cfg.learner.model_path or cfg.model.path
    reward = (cfg.reward.model_path or (cfg.model.path if cfg.spec.trained_role == "reward" else None)
              if cfg.reward.kind == "model" or cfg.spec.trained_role == "reward" else None)
    paths = {"rollout": policy, "learner": policy, "critic": cfg.critic.model_path or cfg.model.path,
             "reference": cfg.reference.model_path or cfg.model.path, "reward": reward}
    return {r: os.path.abspath(p) for r, p in paths.items()
            if r in cfg.roles and p and os.path.isfile(os.path.join(p, "config.json"))}


def check_reward_function(cfg: Config, sample: dict | None) -> None:
    """A rule reward is imported and called once with one row, as the reward actor will call it:
    f(prompts, responses, answers) -> one finite score per response."""
    if cfg.reward.kind != "rule" or "reward" not in cfg.roles or cfg.spec.trained_role == "reward":
        return
    fn = import_reward_function(cfg.reward.function)
    row = sample or make_arithmetic_split(1, 1, seed=0)[0][0]
    where = f"reward.function={cfg.reward.function!r}"
    if getattr(fn, "needs_answers", False) and not str(row.get("answer") or "").strip():
        raise ValueError(f"{where} scores each response against its row's reference answer, but no training row of "
                         f"task.name={cfg.task.name} has an 'answer': name a reward that needs none (reward.kind="
                         f"model or http, or a rule of your own), or prompts with answers")
    try:
        scores = fn([row["prompt"]], [""], [row.get("answer", "")])
    except Exception as e:  # a user's function can raise anything; the preflight names it, no traceback
        raise ValueError(f"{where}: a call with one row f(prompts=[...], responses=[''], answers=[...]) raised "
                         f"{type(e).__name__}: {e} (a rule reward takes three equal-length lists and returns "
                         f"one score per response)") from None
    if isinstance(scores, (str, bytes, dict)) or not hasattr(scores, "__len__"):
        raise ValueError(f"{where}: returned {type(scores).__name__}, not a list of numbers (one score per response)")
    try:
        check_scores(list(scores), 1, where)
    except TypeError as e:
        raise ValueError(f"{where}: returned {type(scores).__name__}, not a list of numbers ({e})") from None


def check_environment(cfg: Config, where: str = "this machine") -> list[str]:
    """Environment variables the actors read: missing ones the run needs are errors, the rest warnings."""
    rc = cfg.reward
    if "reward" in cfg.roles and rc.kind == "http" and rc.token_env and not os.environ.get(rc.token_env):
        raise ValueError(f"reward.token_env={rc.token_env!r}: environment variable {rc.token_env} is not set (or "
                         f"empty) on {where}; the reward actors read it (on a cluster, every node needs it: "
                         f"`rlhf-ray submit --env {rc.token_env}=...` passes it to the job)")
    warnings = []
    if cfg.logging.wandb_mode == "online" and not os.environ.get("WANDB_API_KEY") and \
            not (Path.home() / ".netrc").is_file():
        warnings.append("logging.wandb_mode=online but WANDB_API_KEY is not set and there is no ~/.netrc: "
                        "wandb will fail to log in (wandb_mode=offline writes the run for `wandb sync`)")
    return warnings


def check_local_resources(cfg: Config, roles: tuple[str, ...] | None = None) -> None:
    """A local Ray gets the machine's CPUs (and GPUs), never more: the layout must fit them, unless
    ray.local_num_cpus says how many to pretend. A cluster (ray.address) is checked when joined."""
    if cfg.ray.cluster_address() or cfg.ray.local_num_cpus is not None:
        return
    check_feasible(cfg, [{"CPU": float(os.cpu_count() or 1), "GPU": float(local_gpus(cfg))}],
                   list(roles) if roles else None, where="this machine (a local Ray has its CPUs and GPUs; "
                   "ray.local_num_cpus oversubscribes on purpose)")


def _report(cfg: Config, result: Preflight, seconds: float, echo) -> None:
    for w in result.warnings:
        echo(f"[preflight] warning: {w}")
    if cfg.trainer.resume == "auto":
        echo(f"[resume] trainer.resume=auto: " + (f"continuing from {result.resume_from}" if result.resume_from else
             f"no complete checkpoint in {Path(cfg.trainer.run_dir) / 'checkpoints'}; starting a fresh run"))
    if result.changed:
        echo(f"[resume] settings changed since the checkpoint: " + "; ".join(result.changed[:10])
             + (f" (+{len(result.changed) - 10} more)" if len(result.changed) > 10 else ""))
    echo(f"[preflight] inputs checked in {seconds:.1f}s")
