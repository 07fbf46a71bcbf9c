"""The preflight of model folders by role, without reading a weight: each folder's architecture
(config.json) fits the role that loads it, and LoRA targets name linear modules the model has (the
model built on the meta device from its config.json: no memory, no weights).

    policy (rollout, learner), reference, LLM judge, baseline, synthesize candidate → a causal LM
    reward model, judge=reward's judge → a sequence-classification head (*ForSequenceClassification)
    learner/critic/reward .lora.targets → linear modules of the model that role builds

Without it a causal LM given as a reward model fails inside a Ray actor (an IndexError about mask
shapes), and a LoRA target the model lacks only after every actor started.
"""

from __future__ import annotations

import json
from pathlib import Path

from rlhf_ray.config import Config

CAUSAL_LM = "causal LM"
CLASSIFIER = "sequence classifier"
WANTS = {CAUSAL_LM: ("ForCausalLM", "ForConditionalGeneration"), CLASSIFIER: ("ForSequenceClassification",)}
HINTS = {
    CAUSAL_LM: "a folder whose config.json architectures is a *ForCausalLM (a reward model scores, it cannot write)",
    CLASSIFIER: ("a reward model (*ForSequenceClassification: `rlhf-ray train algorithm=reward_model` makes one from "
                 "a causal LM), or reward.kind=rule"),
}


def architectures(path: str) -> list[str]:
    """config.json's ``architectures`` ([] when it does not say: the loader decides)."""
    try:
        archs = json.loads((Path(path) / "config.json").read_text()).get("architectures") or []
    except (OSError, ValueError) as e:
        raise ValueError(f"{Path(path) / 'config.json'}: cannot be read as JSON ({e})") from None
    return [a for a in archs if isinstance(a, str)]


def check_architecture(path: str, key: str, role: str, want: str) -> None:
    """``path`` (named by config ``key``, loaded as ``role``) holds a ``want`` (CAUSAL_LM or CLASSIFIER)."""
    archs = architectures(path)
    if archs and not any(a.endswith(WANTS[want]) for a in archs):
        raise ValueError(f"{key}={path}: the {role} must be a {want}, but its config.json says architectures="
                         f"{archs}; name {HINTS[want]}")


def role_models(cfg: Config, model_paths: dict[str, str | None]) -> list[tuple[str, str, str, str]]:
    """(folder, config key, role, architecture wanted) of every role's model that has one."""
    out, trains_rm = [], cfg.spec.trained_role == "reward"
    for role, path in model_paths.items():
        if not path or role in ("critic", "env"):  # a critic is any backbone with a new value head
            continue
        if role in ("rollout", "learner"):
            out.append((path, "learner.model_path" if cfg.learner.model_path else "model.path", "policy", CAUSAL_LM))
        elif role == "reference":
            out.append((path, "reference.model_path" if cfg.reference.model_path else "model.path", "reference",
                        CAUSAL_LM))
        elif role == "reward" and not trains_rm and cfg.reward.kind == "model":
            out.append((path, "reward.model_path", "reward model", CLASSIFIER))
    return out


def check_model_roles(cfg: Config, model_paths: dict[str, str | None]) -> None:
    seen = set()
    for path, key, role, want in role_models(cfg, model_paths):
        if (path, want) not in seen:
            seen.add((path, want))
            check_architecture(path, key, role, want)


LORA_MODELS = {"learner": "causal_lm", "critic": "backbone", "reward": "classifier"}  # the class each role builds


def check_lora_targets(cfg: Config, model_paths: dict[str, str | None], roles: tuple[str, ...]) -> None:
    """Every started trainable role with ``lora``: its targets against its model's linear modules."""
    from rlhf_ray.models.lora import check_targets

    for role, kind in LORA_MODELS.items():
        spec = getattr(cfg, role).lora
        if spec is None or role not in roles or not model_paths.get(role):
            continue
        if role == "reward" and cfg.spec.trained_role != "reward":
            continue  # a reward model that is not trained takes no adapters
        path = model_paths[role]
        check_targets(linear_names(path, kind), spec.targets, f"{role}.lora", f"the model in {path}")


def linear_names(path: str, kind: str) -> set[str]:
    """Linear module names of the model a role builds from ``path``, built on the meta device (no weights)."""
    import torch
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_ray.models.lora import linear_module_names

    cls = {"causal_lm": AutoModelForCausalLM, "backbone": AutoModel, "classifier": AutoModelForSequenceClassification}
    try:
        config = AutoConfig.from_pretrained(path, local_files_only=True)
        with torch.device("meta"):
            model = cls[kind].from_config(config)
    except Exception as e:  # noqa: BLE001 - an architecture transformers cannot build is named, not a traceback
        raise ValueError(f"{path}: transformers cannot build its model from config.json to check the LoRA targets "
                         f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    return linear_module_names(model) | ({"value_head"} if kind == "backbone" else set())
