"""LoRA adapters (PEFT) on a trainable role's model, and its weights for the sync and the export.

PEFT wraps the model as ``base_model.model.<HF name>`` and each adapted linear ``x`` as
``x.base_layer`` (the frozen weight) beside ``x.lora_A.default`` and ``x.lora_B.default``. What
leaves the learner is named as the rest of the system expects:

    adapter   PEFT's saved names (``...q_proj.lora_A.weight``): what ``PeftModel.from_pretrained``
              and vLLM's LoRA loader read
    merged    HF names (``model.layers.0.self_attn.q_proj.weight``), W + (α/r)·B·A: what
              transformers and vLLM load as a plain model

Under ZeRO-3 every parameter is partitioned: each is gathered (collectively, on every rank) while
it is read, and only ``source`` (rank 0) keeps a copy.
"""

from __future__ import annotations

import hashlib
import json
import os
from typing import Iterator

import torch
from safetensors.torch import save_file

from rlhf_ray.config import LoraConfig
from rlhf_ray.models.fused import FUSED_GROUPS

PREFIX = "base_model.model."
ADAPTER = "default"  # PEFT's name of the one adapter


class LoraTargetError(ValueError):
    """A target module the model does not have (a typo would otherwise adapt nothing, or fail deep in PEFT)."""


def apply_lora(model: torch.nn.Module, spec: LoraConfig, where: str, heads: tuple[str, ...] = (),
               causal_lm: bool = False):
    """``model`` wrapped in PEFT with adapters on ``spec.targets``; every other weight frozen except the
    parameters of ``heads`` (a value or score head, trained from scratch or on). ``where``: the config
    key, for errors (e.g. "learner.lora")."""
    from peft import LoraConfig as PeftLoraConfig, get_peft_model

    check_targets(linear_module_names(model), spec.targets, where)
    config = PeftLoraConfig(r=spec.rank, lora_alpha=spec.alpha, lora_dropout=spec.dropout,
                            target_modules=list(spec.targets), bias="none",
                            task_type="CAUSAL_LM" if causal_lm else None)
    model = get_peft_model(model, config)
    for name, p in model.named_parameters():
        if any(f".{h}." in f".{hf_name(name)}" for h in heads):
            p.requires_grad_(True)
    return model


def linear_module_names(model: torch.nn.Module) -> set[str]:
    """The last name part of every linear module (what PEFT's ``target_modules`` matches)."""
    return {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}


def check_targets(linear: set[str], targets: list[str], where: str, model: str = "the model") -> None:
    """Every LoRA target is one of ``linear`` (the model's linear module names), or LoraTargetError naming them."""
    missing = [t for t in targets if t not in linear]
    if missing:
        raise LoraTargetError(f"{where}.targets: {missing} are not linear modules of {model}; it has {sorted(linear)}")


def hf_name(name: str) -> str:
    """A PEFT-wrapped parameter's name in the plain model (the adapted layer's own weight for its base)."""
    return name.removeprefix(PREFIX).replace(".base_layer.", ".")


def adapter_name(name: str) -> str:
    """A LoRA parameter's name in a saved PEFT adapter (PEFT drops the adapter's name)."""
    return name.replace(f".lora_A.{ADAPTER}.", ".lora_A.").replace(f".lora_B.{ADAPTER}.", ".lora_B.")


def adapter_config_json(model) -> str:
    """adapter_config.json of the model's adapter, as PEFT writes it (vLLM reads the same file)."""
    config = model.peft_config[ADAPTER].to_dict()
    return json.dumps({k: sorted(v) if isinstance(v, set) else v for k, v in config.items()}, indent=1)


def _lora_layers(model) -> dict[str, torch.nn.Module]:
    from peft.tuners.lora import LoraLayer

    return {name: m for name, m in model.named_modules() if isinstance(m, LoraLayer)}


def touched_modules(model) -> set[str]:
    """HF names of the modules whose weights the adapter changes, with the other members of their fused
    groups (vLLM rebuilds q/k/v and gate/up together: rlhf_ray.models.fused)."""
    adapted = {hf_name(name) for name in _lora_layers(model)}
    out = set(adapted)
    for name in adapted:
        for pattern, members in FUSED_GROUPS:
            m = pattern.match(name + ".weight")
            if m:
                out |= {f"{m.group(1)}{member}_proj" for member in members}
    return out


def merged_parameters(model, zero3: bool, source: bool, touched_only: bool = False,
                      to_host: bool = True) -> Iterator[tuple[str, torch.Tensor | None]]:
    """(HF name, weight) of the model as if the adapter were merged, W + (α/r)·B·A for adapted layers;
    ``touched_only``: only the modules the adapter changes (``touched_modules``). Yields None for the
    tensor on ranks other than ``source``, which must still consume it (the ZeRO-3 gathers are collective)."""
    import deepspeed

    layers = {hf_name(n): m for n, m in _lora_layers(model).items()}
    touched = touched_modules(model) if touched_only else None
    for name, p in model.named_parameters():
        if ".lora_" in name:
            continue
        hf = hf_name(name)
        module, _, leaf = hf.rpartition(".")
        if touched is not None and module not in touched:
            continue
        layer = layers.get(module) if leaf == "weight" else None
        params = [p, *(layer.parameters() if layer is not None else ())]
        with deepspeed.zero.GatheredParameters(params, enabled=zero3):
            if not source:
                yield hf, None
                continue
            w = p.detach()
            if layer is not None:
                with torch.no_grad():
                    w = w + layer.get_delta_weight(ADAPTER).to(w.dtype)  # a new tensor
            elif zero3:
                w = w.clone()  # the gathered parameter is freed when this block ends
            yield hf, w.to("cpu") if to_host else w


def adapter_parameters(model, zero3: bool, source: bool) -> Iterator[tuple[str, torch.Tensor | None]]:
    """(saved PEFT name, CPU tensor) of every adapter weight on ``source``, None elsewhere (collective under ZeRO-3)."""
    import deepspeed

    for name, p in model.named_parameters():
        if ".lora_" not in name:
            continue
        with deepspeed.zero.GatheredParameters([p], enabled=zero3):
            yield adapter_name(name), p.detach().to("cpu", copy=True) if source else None


def adapter_digest(named: list[tuple[str, torch.Tensor]]) -> str:
    """A short fingerprint of an adapter's names and values (the same on the learner and an engine)."""
    h = hashlib.sha256()
    for name, t in sorted(named, key=lambda e: e[0]):
        h.update(name.encode())
        h.update(t.detach().to(torch.float32).contiguous().numpy().tobytes())
    return h.hexdigest()[:16]


def save_adapter(path: str, named: list[tuple[str, torch.Tensor]], config_json: str) -> str:
    """A PEFT adapter folder (adapter_model.safetensors + adapter_config.json) that
    ``PeftModel.from_pretrained`` and vLLM's LoRARequest load."""
    os.makedirs(path, exist_ok=True)
    save_file({n: t.contiguous() for n, t in named}, os.path.join(path, "adapter_model.safetensors"))
    with open(os.path.join(path, "adapter_config.json"), "w") as f:
        f.write(config_json)
    return path
