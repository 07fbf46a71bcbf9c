"""Thin wrappers over transformers loaders that fail early with the path in the message.

transformers treats a missing local folder as a hub repo id and, offline, fails with a
confusing "couldn't connect to huggingface.co" error; checking first gives a clear one.
"""
from __future__ import annotations

import json
import os

import torch

from rlhf_ray.models.shipped import SHIPPED_MODELS, shipped_folder
from rlhf_ray.runs.checkpoint import MARKER as CHECKPOINT_MARKER

_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "tokenizer.model", "vocab.json")


def _require_dir(path: str, what: str) -> str:
    path = os.path.expanduser(str(path))
    if not os.path.isdir(path):
        raise FileNotFoundError(
            f"{what} folder not found: {path!r} (models are loaded from local folders only; "
            f"the models shipped on PyPI are named {' or '.join(map(repr, SHIPPED_MODELS))} instead of a folder)"
        )
    return path


def _as_dtype(dtype) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    name = str(dtype).replace("torch.", "")
    aliases = {"fp32": "float32", "fp16": "float16", "half": "float16", "bf16": "bfloat16"}
    value = getattr(torch, aliases.get(name, name), None)
    if not isinstance(value, torch.dtype):
        raise ValueError(f"unknown dtype {dtype!r}")
    return value


def check_model_folder(path: str, tokenizer: bool = True) -> str:
    """Fail with the path in the message unless ``path`` holds config.json, weights and
    (unless tokenizer=False) a tokenizer; return the expanded path.

    Checked before handing a path to vLLM or transformers, whose own errors for a missing
    local folder talk about the hub.
    """
    path = _require_dir(path, "Model")
    names = os.listdir(path)
    if "config.json" not in names:
        raise FileNotFoundError(f"No config.json in model folder {path!r}")
    try:
        json.loads(open(os.path.join(path, "config.json"), encoding="utf-8").read())
    except (OSError, UnicodeDecodeError, ValueError) as e:
        raise ValueError(f"{os.path.join(path, 'config.json')}: not valid JSON ({e}); the folder is not a complete "
                         "model export") from None
    if not any(n.endswith((".safetensors", ".bin", ".safetensors.index.json")) for n in names):
        raise FileNotFoundError(f"No weights (*.safetensors / *.bin) in model folder {path!r}")
    if tokenizer and not any(f in names for f in _TOKENIZER_FILES):
        raise FileNotFoundError(f"No tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {path!r}")
    return path


def resolve_model_path(path: str) -> str:
    """A model path of a config: a shipped model's name ('smollm2', 'gemma3': its exported folder,
    built once and cached), a run's checkpoint or run directory (its policy's HF export), or a checked
    local folder, as an absolute path."""
    folder = shipped_folder(path)
    if folder is not None:
        return folder
    path = run_export(path) or path
    check_model_folder(path)
    return os.path.abspath(os.path.expanduser(path))


def run_export(path: str) -> str | None:
    """The HF export a run's folder holds, for a path that is not a model folder itself: a checkpoint's
    ``policy_hf``, or in a run directory its ``final`` folder, else its newest complete checkpoint's
    ``policy_hf`` (rlhf_ray.runs.checkpoint); None for anything else."""
    path = os.path.expanduser(path)
    if not os.path.isdir(path) or os.path.isfile(os.path.join(path, "config.json")):
        return None
    for candidate in ("policy_hf", "final"):
        if os.path.isfile(os.path.join(path, candidate, "config.json")):
            return os.path.join(path, candidate)
    root = os.path.join(path, "checkpoints")
    steps = sorted(d for d in os.listdir(root) if os.path.isfile(os.path.join(root, d, CHECKPOINT_MARKER))) \
        if os.path.isdir(root) else []
    for step in reversed(steps):
        if os.path.isfile(os.path.join(root, step, "policy_hf", "config.json")):
            return os.path.join(root, step, "policy_hf")
    return None


def load_tokenizer(path: str, **kwargs):
    from transformers import AutoTokenizer

    path = _require_dir(path, "Tokenizer")
    if not any(os.path.isfile(os.path.join(path, f)) for f in _TOKENIZER_FILES):
        raise FileNotFoundError(f"No tokenizer files ({', '.join(_TOKENIZER_FILES)}) in {path!r}")
    return AutoTokenizer.from_pretrained(path, local_files_only=True, **kwargs)


def load_causal_lm(path: str, dtype="float32", **kwargs):
    from transformers import AutoModelForCausalLM

    path = check_model_folder(path, tokenizer=False)
    return AutoModelForCausalLM.from_pretrained(
        path, dtype=_as_dtype(dtype), local_files_only=True, **kwargs
    )
