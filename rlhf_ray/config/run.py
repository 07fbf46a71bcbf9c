"""The config sections of a run as a whole: its prompts, its length and records, the weight sync, the
metrics sinks, which Ray it runs on and how its actors are placed."""

from __future__ import annotations

import os
from typing import Literal

from pydantic import Field, model_validator

from rlhf_ray.config.base import Strict
from rlhf_ray.config.evaluation import CompareConfig
from rlhf_ray.config.roles import ROLE_SECTIONS


class TaskConfig(Strict):
    name: Literal["arithmetic", "guess_number", "gsm8k", "jsonl", "hh"] = Field("arithmetic", description=(
        "Prompt source: generated arithmetic, the generated guess-a-number game (env.environment="
        "rlhf_ray.envs.guess:GuessNumberEnvironment), GSM8K files (question/answer), JSONL files (prompt: a question "
        "or chat messages; optional answer), or HH-RLHF pair files (the dialogue before the last answer)."))
    train_file: str | None = Field(None, description="gsm8k/jsonl/hh: training prompts, .jsonl or .jsonl.gz (relative to the working directory).")
    eval_file: str | None = Field(None, description="gsm8k/jsonl/hh: held-out prompts file; empty = the last n_eval rows of train_file.")
    n_train: int = Field(2000, ge=1, description="Training questions (files: at most this many, from the top of train_file).")
    n_eval: int = Field(100, ge=1, description="Held-out questions (greedy accuracy; files: at most this many).")
    max_operand: int = Field(50, ge=1, description="Largest operand of generated questions (guess_number: largest secret).")
    min_operand: int = Field(0, ge=0, description="Smallest operand of generated arithmetic questions (100 with max_operand 999: three-digit).")
    ops: list[Literal["+", "-", "*"]] = Field(default_factory=lambda: ["+", "-"], description="Operations of generated arithmetic questions.")
    system_prompt: str | None = Field(None, description="Optional system message in the chat template.")
    instruction: str = Field("", description="Text appended to each question (e.g. an answer-format hint).")
    long_prompts: Literal["error", "drop"] = Field("error", description=(
        "A prompt over model.max_prompt_tokens: stop naming its row, or leave it out (counted in the log)."))

    @model_validator(mode="after")
    def _files_named(self) -> "TaskConfig":
        if self.name not in ("arithmetic", "guess_number") and not self.train_file:
            raise ValueError(f"task.name={self.name} reads prompts from a file: set task.train_file")
        return self


class TrainerConfig(Strict):
    total_steps: int = Field(20, ge=1, description="PPO steps (one generate→update cycle each).")
    eval_every: int = Field(5, ge=0, description="Held-out evaluation every K steps (0 = only before and after).")
    seed: int = Field(0, description="Seed of prompts, sampling and initialisation.")
    run_dir: str = Field("runs/ppo", description="Where metrics.jsonl, the resolved config and outputs go.")
    call_timeout_s: float = Field(1800.0, gt=0, description="A remote call slower than this fails with the actor's name.")
    placement_wait_s: float = Field(300.0, gt=0, description=(
        "After a node is lost, how long a restarted actor may wait for a node with room for it (an autoscaler "
        "brings one within minutes); then a rollout/reward/reference rank is dropped and a learner/critic "
        "group stops the run naming what is missing (docs/reliability.md)."))
    max_actor_restarts: int = Field(3, ge=0, description="Actor failures survived per run: rollout/reward/reference restarts (stage retried) plus learner/critic restores from the last checkpoint.")
    save_every: int = Field(0, ge=0, description="Checkpoint every K steps (0 = only at the end); see docs/reliability.md.")
    keep_last: int = Field(2, ge=1, description="Complete checkpoints kept; older ones are deleted.")
    save_hf: bool = Field(True, description="Put an HF export of the policy (safetensors) in every checkpoint.")
    resume: str = Field("none", description=(
        "'auto' = newest complete checkpoint of run_dir (a fresh start when there is none), 'none', or a checkpoint "
        "folder; the checkpoint must fit the config (docs/reliability.md)."))
    overwrite: bool = Field(False, description=(
        "Start afresh in a run_dir that holds another run's outputs, deleting its checkpoints and metrics; "
        "without it such a start is an error."))
    eval: CompareConfig = Field(default_factory=CompareConfig, description=(
        "The policy's answers against a baseline's, judged by a reward model or an LLM (docs/methods/evaluation.md)."))

    @model_validator(mode="after")
    def _overwrite_is_fresh(self) -> "TrainerConfig":
        if self.overwrite and self.resume != "none":
            raise ValueError(f"trainer.overwrite=true starts afresh: it cannot go with trainer.resume={self.resume}")
        return self


class SyncConfig(Strict):
    transport: Literal["object_store", "collective"] = Field("object_store", description=(
        "How the learner's weights reach the rollout engines: one object-store put per bucket that every engine "
        "pulls, or a broadcast over a collective group of the learner and every engine worker (gloo on CPU, NCCL "
        "on GPU). See docs/performance.md for which scales how."))
    bucket_mb: float = Field(256.0, gt=0, description=(
        "Weight-sync bucket size, MiB: one transfer (and one remote call per engine) per bucket, cut between layers."))
    verify: bool = Field(False, description=(
        "The learner adds a CRC32 of each bucket's bytes to the sync's manifest and every engine checks it (names, "
        "shapes, dtypes, order and that a sync covered every weight are always checked): a debug mode, one more "
        "pass over the weights on each side (0.3-1 s per sync of SmolLM2 on 2 CPU cores)."))
    group_timeout_s: float = Field(600.0, gt=0, description=(
        "transport=collective: seconds a member waits in the weight group's rendezvous or one broadcast before failing."))
    lora: Literal["auto", "adapter", "merged"] = Field("auto", description=(
        "With learner.lora: send the adapter alone, served by vLLM's LoRA support as a new version per sync "
        "(always by the object store: it is small), or the merged weights of only the layers the adapter touches "
        "(by sync.transport); auto = adapter where vLLM serves it well (engines on GPU, a rank and modules vLLM's "
        "LoRA supports), merged otherwise (its CPU LoRA path is slow). The choice is printed at start."))


class LoggingConfig(Strict):
    wandb_mode: Literal["offline", "online", "disabled"] = Field("offline", description="wandb mode.")
    wandb_project: str = Field("rlhf_ray", description="wandb project.")
    tensorboard: bool = Field(False, description="Also write TensorBoard events to <run_dir>/tensorboard.")
    ray_metrics: bool = Field(True, description="Export key metrics through Ray's metrics API (dashboard / Prometheus).")
    console_every: int = Field(1, ge=1, description="Print a metrics line every K steps.")
    progress_bar: bool = Field(True, description="Show a tqdm bar on the controller.")
    verbose: bool = Field(False, description=(
        "Show every library's output on the console (vLLM's engine INFO, DeepSpeed, transformers, Ray, progress bars "
        "of model loading); by default it goes to <run_dir>/logs/ (<run id>/<role>-<rank>.log per actor, driver.log) and the "
        "console shows the run: progress, steps, evaluations, alarms, warnings of rlhf_ray and errors."))


class RayConfig(Strict):
    address: str | None = Field(None, description=(
        "Which Ray the run uses. Empty = the cluster of the Ray job it runs in (a driver started by `rlhf-ray submit` "
        "or `ray job submit`, for which Ray sets RAY_ADDRESS and RAY_JOB_CONFIG_JSON_ENV_VAR), otherwise a private "
        "local Ray on 127.0.0.1 (a RAY_ADDRESS in your shell alone does not count); 'local' = always a private local "
        "Ray, even inside a job; 'auto', 'HOST:6379' or 'ray://HOST:10001' = join that cluster ('auto': RAY_ADDRESS, "
        "else the `ray start` head on this machine)."))
    local_num_cpus: int | None = Field(None, ge=1, description=(
        "Logical CPUs of a local Ray; empty = the machine's CPU count, and a layout asking more is an error "
        "before anything starts (set this to oversubscribe on purpose)."))
    local_num_gpus: int | None = Field(None, ge=0, description="Logical GPUs of a local Ray (for layout tests).")
    local_dashboard: bool = Field(True, description="Start the Ray dashboard (127.0.0.1:8265) with a local Ray.")
    namespace: str = Field("rlhf_ray", description="Ray namespace of the run's named actors.")
    cpu_malloc_keep_freed: bool = Field(True, description=(
        "CPU-only actors keep freed memory for reuse (glibc MALLOC_MMAP_MAX_=0, no heap trimming) instead of "
        "returning it to the OS each step: about 30% faster CPU training steps; the memory stays with the actor."))
    cluster_config: str | None = Field(None, description="Cluster file (cluster_configs/) this run is sized for; tests check it fits.")

    def cluster_address(self) -> str | None:
        """The rule of ``address``: the address to join, or None for a private local Ray."""
        if self.address == "local":
            return None
        if self.address:
            return self.address
        # Ray Jobs starts every driver with RAY_ADDRESS set to its cluster's GCS and the job's config in
        # RAY_JOB_CONFIG_JSON_ENV_VAR (ray/dashboard/modules/job/job_supervisor.py, _get_driver_env_vars).
        # Both are needed: a RAY_ADDRESS in a user's shell (often the dashboard URL for `rlhf-ray submit`)
        # must not turn a local `rlhf-ray train` into a cluster client. "auto" rather than the address:
        # ray.init then also turns token auth on when a token is at hand (ray/_private/worker.py).
        if os.environ.get("RAY_ADDRESS") and "RAY_JOB_CONFIG_JSON_ENV_VAR" in os.environ:
            return "auto"
        return None


class PlacementConfig(Strict):
    colocate: list[list[str]] = Field(default_factory=list, description=(
        "Groups of roles sharing one placement group, rank i of each in bundle i (e.g. [[learner, reference]]); other roles stand apart."))
    strategy: Literal["PACK", "SPREAD", "STRICT_PACK", "STRICT_SPREAD"] = Field(
        "PACK", description="Ray placement strategy of every placement group.")

    @model_validator(mode="after")
    def _known_roles(self) -> "PlacementConfig":
        roles = set(ROLE_SECTIONS)
        seen: set[str] = set()
        for group in self.colocate:
            bad = [r for r in group if r not in roles]
            if bad:
                raise ValueError(f"placement.colocate names unknown roles {bad}; roles are {sorted(roles)}")
            if seen & set(group):
                raise ValueError(f"placement.colocate lists {sorted(seen & set(group))} in more than one group")
            seen |= set(group)
        return self
