"""The adapter version a vLLM engine serves (sync.lora=adapter).

Each sync writes the adapter to a folder of its own on the engine's node and registers it with vLLM
under a new id; the adapter before it is removed once the new one is in. Ids are never reused: vLLM
caches adapters by id, and a restored run syncs a version number again with other weights. Every
request carries the current adapter (``request``), so a request started on one version finishes on
it: vLLM keeps two adapters resident (``MAX_LORAS``) while one replaces the other. One folder is
left on disk at a time (a few MiB; the last one stays when the actor is killed).
"""

from __future__ import annotations

import json
import os
import shutil
import tempfile

import torch

from rlhf_ray.models.lora import adapter_digest, save_adapter
from rlhf_ray.sync.manifest import WeightSyncError

MAX_LORAS = 2  # resident adapters: the one serving and the one replacing it


def engine_lora_args(rank: int) -> dict:
    """vLLM engine arguments that let it serve one rank-``rank`` adapter at a time (two while one replaces the other)."""
    return {"enable_lora": True, "max_lora_rank": rank, "max_loras": MAX_LORAS, "max_cpu_loras": MAX_LORAS}


class ServedAdapter:
    def __init__(self, llm, engine: str):
        self.llm, self.engine = llm, engine
        self.root = tempfile.mkdtemp(prefix="rlhf_ray_lora_")
        self.loads = 0
        self.request = None  # None: the base model (before the first sync)
        self.digest = ""

    def load(self, version: int, config_json: str, named: list[tuple[str, torch.Tensor]]) -> None:
        from vllm.lora.request import LoRARequest

        self.loads += 1
        path = save_adapter(os.path.join(self.root, f"v{version}-{self.loads}"), named, config_json)
        request = LoRARequest(f"policy-v{version}-{self.loads}", self.loads, path)
        if not self.llm.llm_engine.add_lora(request):  # loads and checks it now, not at the next request
            raise WeightSyncError(f"{self.engine}: vLLM refused adapter version {version} ({path})")
        old, self.request = self.request, request
        self.digest = adapter_digest(named)
        if old is not None:
            self.llm.llm_engine.remove_lora(old.lora_int_id)
            shutil.rmtree(old.lora_path, ignore_errors=True)

    @staticmethod
    def rank(config_json: str) -> int:
        return int(json.loads(config_json)["r"])
