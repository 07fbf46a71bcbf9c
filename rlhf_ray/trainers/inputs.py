"""What a run reads before any actor starts: model folders, tokenizer, prompts or data, the sampler.

The first half of a controller's construction, pure (no Ray): everything that can be wrong with the
input fails here, naming the field or file, before anything expensive starts; and tests build it on
its own. The second half, the running cluster, is rlhf_ray.trainers.controller.Controller.
"""

from __future__ import annotations

from dataclasses import dataclass

from rlhf_ray.config import Config
from rlhf_ray.data import DataError, Encoded, load_offline_data
from rlhf_ray.data.prompts import PromptSampler, PromptSet, load_task
from rlhf_ray.models.loading import load_tokenizer, resolve_model_path
from rlhf_ray.rewards.functions import import_reward_function


def model_paths(cfg: Config) -> dict[str, str | None]:
    """The model folder each of the algorithm's roles loads (None: a reward that is no model)."""
    spec, paths = cfg.spec, {}
    learner = resolve_model_path(cfg.learner.model_path or cfg.model.path)
    for role in cfg.roles:
        if role in ("rollout", "learner"):  # the engines serve the learner's weights from the start
            paths[role] = learner
        elif role == "env":  # environments hold no model
            paths[role] = None
        elif role in ("critic", "reference"):
            paths[role] = resolve_model_path(getattr(cfg, role).model_path or cfg.model.path)
        elif spec.trained_role == "reward":  # reward-model training starts from a reward model or the policy
            paths[role] = resolve_model_path(cfg.reward.model_path or cfg.model.path)
        elif cfg.reward.kind == "model":
            if not cfg.reward.model_path:
                raise ValueError("reward.kind=model needs reward.model_path")
            paths[role] = resolve_model_path(cfg.reward.model_path)
        else:
            if cfg.reward.kind == "rule":
                import_reward_function(cfg.reward.function)
            paths[role] = None
    return paths


@dataclass
class RunInputs:
    cfg: Config
    model_paths: dict[str, str | None]
    tokenizer: object
    sampler: PromptSampler

    @property
    def trained_path(self) -> str:
        """The folder of the trained role's starting weights (its tokenizer goes with its exports)."""
        return self.model_paths[self.cfg.spec.trained_role]

    def sample_row(self) -> dict | None:
        """One training row {"prompt", "answer"} (the preflight calls the reward function with it)."""
        return None


@dataclass
class PromptInputs(RunInputs):
    """Online loops: prompts to sample from, and held-out prompts to evaluate on."""

    train_set: PromptSet
    eval_set: PromptSet

    @classmethod
    def load(cls, cfg: Config) -> "PromptInputs":
        paths = model_paths(cfg)
        tokenizer = load_tokenizer(paths[cfg.spec.trained_role])
        train_set, eval_set = load_task(cfg, tokenizer)
        return cls(cfg, paths, tokenizer, PromptSampler(len(train_set.ids), cfg.trainer.seed), train_set, eval_set)

    def sample_row(self) -> dict | None:
        """The first training row with a reference answer (row 0 when none has one)."""
        return next((r for r in self.train_set.rows if str(r.get("answer") or "").strip()), self.train_set.rows[0])

    def sample_rows(self, prompts: int, samples_per_prompt: int) -> list[int]:
        """Training-set row of every sample of the next ``prompts`` prompts, grouped per prompt."""
        return repeat_prompts(self.sampler.next(prompts), samples_per_prompt)


@dataclass
class DataInputs(RunInputs):
    """Offline loops: tokenized training units, optional held-out units, and the run's length."""

    train: Encoded
    eval: Encoded | None
    total_steps: int

    @classmethod
    def load(cls, cfg: Config) -> "DataInputs":
        oc, paths = cfg.offline, model_paths(cfg)
        tokenizer = load_tokenizer(paths[cfg.spec.trained_role])
        train, held_out = load_offline_data(cfg, tokenizer)
        if len(train.units) < oc.batch_samples_global:
            raise DataError(f"{train.describe()}: fewer than offline.batch_samples_global={oc.batch_samples_global}")
        total = oc.max_steps or oc.epochs * (len(train.units) // oc.batch_samples_global)
        return cls(cfg, paths, tokenizer, PromptSampler(len(train.units), cfg.trainer.seed), train, held_out, total)


def repeat_prompts(indices: list[int], n: int) -> list[int]:
    """Each prompt index n times in a row. The n samples of a prompt must be consecutive rows:
    group estimators and best-of-n selection read them as groups of n, and generation, scoring and
    the learner's log-probs all keep row order."""
    return [i for i in indices for _ in range(n)]
