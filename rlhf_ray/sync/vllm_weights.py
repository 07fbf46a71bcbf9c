"""Push new policy weights into a running vLLM engine (no restart, no disk round-trip).

What this relies on (checked against vllm 0.32 on CPU, V1 engine):

* `Worker.reload_weights(weights_iterator=...)` (CPUWorker inherits it from the GPU worker)
  -> `vllm.model_executor.model_loader.reload.inplace.reload_weights`. It takes HF checkpoint
  names (q_proj/k_proj/v_proj, gate_proj/up_proj), lets the model's own `load_weights` fuse
  them into qkv_proj / gate_up_proj, re-runs per-layer post-load processing (CPU weight
  repacking, quantization) and copies into the existing tensors, so the KV cache and any
  captured graphs stay valid. Calling `model.load_weights` directly on the live model fails
  in 0.32 (its weight loaders are wrapped for layerwise reload: AttributeError).
* Loads run in the worker, through methods that `WeightSyncExtension` adds to vLLM's worker
  class (the engine is built with `LLM(..., worker_extension_cls=WORKER_EXTENSION)`), called
  by `LLM.collective_rpc`. In-process engines (VLLM_ENABLE_V1_MULTIPROCESSING=0) get the
  tensors as-is. With multiprocessing (and with tensor-parallel workers on GPU), collective_rpc
  arguments cross a msgpack hop that turns tensors into plain lists, so there we send one
  `torch.save` blob; or, with `sync.transport=collective`, each worker joins the weight group
  (rlhf_ray.sync.group) and receives the bucket's bytes by broadcast, in its own process.
* The reload is layerwise: a fused vLLM layer is rebuilt from what one call supplies, so a
  call carrying q_proj but not k_proj/v_proj of the same layer corrupts that layer (we
  measured it). Layers that get nothing in a call keep their old values. Hence: send whole
  fused groups in each call; `_check_fused_groups` enforces it for Llama-style names.
* Prefix caching is on by default and keys KV blocks by token ids only, so blocks computed
  with the old weights would be reused for the same prompt prefix after the update (we
  measured log-prob errors of ~20 nats). The prefix cache is reset after every load.
"""
from __future__ import annotations

import io
import logging
from collections import defaultdict

import torch

from rlhf_ray.models.fused import FUSED_GROUPS
from rlhf_ray.sync.buckets import receive_bucket
from rlhf_ray.sync.group import WeightGroup
from rlhf_ray.sync.manifest import BucketManifest

WORKER_EXTENSION = "rlhf_ray.sync.vllm_weights.WeightSyncExtension"

_RELOAD_LOGGERS = ("vllm.model_executor.model_loader.reload.layerwise",
                   "vllm.model_executor.model_loader.reload.inplace")


class WeightSyncExtension:
    """Mixed into vLLM's worker class by `worker_extension_cls`; runs in the worker process."""

    def rlhf_ray_reload(self, named: list) -> int:
        """In-process engines: the tensors themselves."""
        _reload(self, named)
        return len(named)

    def rlhf_ray_load_weights(self, payload: bytes) -> int:
        """Engines in other processes: one torch.save blob of the bucket."""
        named = torch.load(io.BytesIO(payload), weights_only=True, map_location="cpu")
        _reload(self, named)
        return len(named)

    def rlhf_ray_join_weight_group(self, addr: str, port: int, first_rank: int, world_size: int,
                                   timeout_s: float, local_addr: str) -> int:
        """Joins the learner's weight group as rank ``first_rank`` + this worker's rank in the engine."""
        old = getattr(self, "rlhf_ray_weight_group", None)
        if old is not None:
            old.close()
        self.rlhf_ray_weight_group = WeightGroup(addr, port, first_rank + self.rank, world_size, timeout_s, local_addr)
        return self.rlhf_ray_weight_group.rank

    def rlhf_ray_receive_bucket(self, manifest: dict, verify: bool, engine: str) -> int:
        """One bucket by broadcast from the learner, checked against its manifest, then loaded."""
        named = receive_bucket(self.rlhf_ray_weight_group, BucketManifest.from_dict(manifest), verify, engine)
        _reload(self, named)
        return len(named)


def _reload(worker, named: list[tuple[str, torch.Tensor]]) -> None:
    """vLLM's layerwise in-place reload of ``named`` (HF names), the tied head added, fused groups whole."""
    hf_config = worker.vllm_config.model_config.hf_config
    named = with_tied_head(getattr(hf_config, "tie_word_embeddings", False), list(named))
    _check_fused_groups([n for n, _ in named])
    logs = [logging.getLogger(name) for name in _RELOAD_LOGGERS]
    quiet = _DropPartialLoadWarnings()
    for log in logs:
        log.addFilter(quiet)
    try:
        worker.reload_weights(weights_iterator=named)
    finally:
        for log in logs:
            log.removeFilter(quiet)


def _check_fused_groups(names: list[str]) -> None:
    seen: dict[tuple, set[str]] = defaultdict(set)
    for name in names:
        for pattern, members in FUSED_GROUPS:
            m = pattern.match(name)
            if m:
                seen[(m.group(1), m.group(3), members)].add(m.group(2))
    for (prefix, kind, members), got in seen.items():
        if set(members) - got:
            missing = [f"{prefix}{p}_proj.{kind}" for p in members if p not in got]
            raise ValueError(
                f"vLLM fuses {'/'.join(members)} projections into one layer; this update has "
                f"{sorted(got)} but lacks {missing}. Send fused groups in the same call."
            )


class _DropPartialLoadWarnings(logging.Filter):
    # Updates arrive in buckets, so every call leaves most layers untouched on purpose (they keep
    # their values), and RotaryEmbedding has no checkpoint weights at all; vLLM warns about each
    # such layer on every call. Whether a sync worked is checked by log-probs, not by these lines.
    def filter(self, record: logging.LogRecord) -> bool:
        msg = record.getMessage()
        return "Failed to load weights" not in msg and "weights were not loaded from checkpoint" not in msg


def _is_in_process(llm) -> bool:
    return type(llm.llm_engine.engine_core).__name__ == "InprocClient"


def _check_extension(llm) -> None:
    if llm.llm_engine.vllm_config.parallel_config.worker_extension_cls != WORKER_EXTENSION:
        raise RuntimeError(f"build the engine with LLM(..., worker_extension_cls={WORKER_EXTENSION!r}): weight "
                           "updates run in vLLM's workers through the methods it adds")


def with_tied_head(tied: bool, named_tensors: list) -> list:
    """Adds `lm_head.weight` beside the input embedding when the model ties them.

    A trainer's `named_parameters()` lists a tied weight once, under the embedding's name; vLLM
    skips `lm_head.weight` when loading a tied model yet keeps a separately packed copy of the head
    on CPU, which is rebuilt only when the head's layer is given weights in the same call."""
    if not tied:
        return named_tensors
    names = {n for n, _ in named_tensors}
    embed = [t for n, t in named_tensors if n.endswith("embed_tokens.weight")]
    if embed and "lm_head.weight" not in names:
        named_tensors = named_tensors + [("lm_head.weight", embed[0])]
    return named_tensors


def load_weights_into_vllm(llm, named_tensors: list[tuple[str, torch.Tensor]]) -> None:
    """Load HF-named tensors (e.g. `model.state_dict().items()`) into a live `vllm.LLM`.

    Tensors may be any dtype/device; vLLM casts into its own parameters. Must not be called
    while requests are in flight (LLM.generate is synchronous, so between calls is fine).
    """
    _check_extension(llm)
    named_tensors = [(str(n), t.detach()) for n, t in named_tensors]
    if not named_tensors:
        return
    _check_fused_groups([n for n, _ in named_tensors])  # here too: fail in the caller's process, not a worker's
    if _is_in_process(llm):
        llm.collective_rpc("rlhf_ray_reload", args=(named_tensors,))
    else:
        buf = io.BytesIO()
        torch.save([(n, t.cpu()) for n, t in named_tensors], buf)
        llm.collective_rpc("rlhf_ray_load_weights", args=(buf.getvalue(),))
    reset_prefix_cache(llm)


def join_weight_group(llm, addr: str, port: int, first_rank: int, world_size: int, timeout_s: float,
                      local_addr: str) -> list[int]:
    """Every worker of the engine joins the weight group (ranks first_rank, first_rank + 1, ...)."""
    _check_extension(llm)
    return llm.collective_rpc("rlhf_ray_join_weight_group",
                              args=(addr, port, first_rank, world_size, timeout_s, local_addr))


def receive_into_vllm(llm, manifest: BucketManifest, verify: bool, engine: str) -> None:
    """One bucket by broadcast into every worker of the engine (each holds its tensor-parallel shard)."""
    llm.collective_rpc("rlhf_ray_receive_bucket", args=(manifest.to_dict(), verify, engine))
    if manifest.last:
        reset_prefix_cache(llm)


def reset_prefix_cache(llm) -> None:
    if not llm.reset_prefix_cache():
        raise RuntimeError("vLLM refused to reset its prefix cache after a weight update")


def vllm_named_parameters(llm) -> list[tuple[str, torch.Tensor]]:
    """The engine's own parameters (vLLM names and fused layout, e.g. qkv_proj), on CPU.

    In-process engines only (apply_model ships a lambda). On the CPU backend this raises:
    after loading, vLLM packs every linear weight into a oneDNN/SGL kernel handle and
    replaces `layer.weight` with an empty tensor, so those weights cannot be read back.
    Use `vllm_prompt_logprobs` to check a sync there instead.
    """
    named = llm.apply_model(lambda model: [(n, p.detach().cpu()) for n, p in model.named_parameters()])[0]
    packed = [n for n, t in named if t.numel() == 0]
    if packed:
        raise RuntimeError(
            f"{len(packed)} vLLM weights (e.g. {packed[0]}) are packed into CPU GEMM kernels and "
            "cannot be read back; compare vllm_prompt_logprobs() with the trainer's log-probs instead"
        )
    return named


def vllm_prompt_logprobs(llm, token_ids: list[int], lora_request=None) -> list[float]:
    """Log-probs of token_ids[1:] given their prefixes, under the engine's current weights.

    A layout-independent fingerprint of the served weights: equal (to ~1e-5 in float32) to
    log_softmax(hf_model(ids).logits)[:-1] gathered at ids[1:] when a sync worked. Requests
    with prompt_logprobs are not served from the prefix cache, so this measures the weights.
    """
    from vllm import SamplingParams
    from vllm.inputs import TokensPrompt

    params = SamplingParams(max_tokens=1, temperature=0.0, prompt_logprobs=0)
    out = llm.generate([TokensPrompt(prompt_token_ids=list(token_ids))], params, use_tqdm=False,
                       lora_request=lora_request)[0]
    return [step[t].logprob for step, t in zip(out.prompt_logprobs[1:], token_ids[1:])]
