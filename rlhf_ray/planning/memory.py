"""How much memory each actor of a config needs, from the model folders' config.json alone: pure.

Every estimate is a breakdown in bytes (parts → bytes) of one actor, on its GPU (or in its node's RAM
for a CPU actor). The formulas, with where they come from:

* Model states of a DeepSpeed-trained role (learner, critic; reward under algorithm=reward_model),
  AdamW, ``zero_stage`` partitioning over the role's ``num_actors`` (N), P parameters, L the largest
  layer's parameters: counted the way DeepSpeed's own estimators count them
  (deepspeed/runtime/zero/stage_1_and_2.py ``estimate_zero2_model_states_mem_needs``: 2P + 18P/N;
  stage3.py ``estimate_zero3_model_states_mem_needs``: 18P/N + 4L, no offload), see ``model_states``.
* Activations of one training micro-batch: Korthikanti et al. 2022, "Reducing Activation Recomputation
  in Large Transformer Models" (arXiv:2205.05198) §4.1: s·b·h·(34 + 5·a·s/h) bytes per layer with
  16-bit activations; the 5·a·s/h term is the attention-score matrices, which the fused attention
  kernels transformers uses by default (SDPA) do not keep, so 34·s·b·h. With gradient checkpointing
  (full recomputation, §4.2) each layer keeps its 2·s·b·h input and one layer is recomputed at a time.
  fp32 activations take twice the bytes. See ``activation_bytes``.
* Logits over the vocabulary (they dominate small models): counted from rlhf_ray/models/forward.py,
  see ``logit_bytes``.
* vLLM takes ``rollout.gpu_memory_utilization`` of each of its GPUs (weights/TP + KV cache inside it);
  on CPU its weights plus ``rollout.cpu_kv_cache_gib``.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass, field

from rlhf_ray.config import Config
from rlhf_ray.models.shipped import shipped_folder

GIB = 2**30
GPU_RUNTIME = 1 * GIB  # per GPU process: CUDA context, cuBLAS/NCCL workspaces, allocator slack (an assumption)
CPU_RUNTIME = GIB // 2  # per actor process: Python, torch and the Ray worker
DTYPE_BYTES = {"float32": 4, "bfloat16": 2, "float16": 2, "fp32": 4, "bf16": 2, "fp16": 2}


@dataclass(frozen=True)
class ModelShape:
    """What the estimates need of a model: exact parameter counts and the transformer's dimensions."""
    params: int  # distinct parameters (tied embeddings once), as DeepSpeed's model_to_params counts
    largest_layer: int  # the most parameters one module holds itself (DeepSpeed's largest_layer_params)
    layers: int
    hidden: int
    heads: int
    kv_heads: int
    head_dim: int
    vocab: int
    linears: tuple[tuple[str, int, int], ...] = ()  # (module name's last part, in, out) of every linear layer

    def lora_params(self, targets: list[str], rank: int) -> int:
        """Parameters of rank-``rank`` adapters on the linear layers named ``targets``: r·(in + out) each."""
        return sum(rank * (i + o) for name, i, o in self.linears if name in targets)

    def kv_bytes_per_token(self, dtype_bytes: int) -> int:
        """K and V of every layer for one token: 2·layers·kv_heads·head_dim·bytes (vLLM's cache block size / block)."""
        return 2 * self.layers * self.kv_heads * self.head_dim * dtype_bytes


def model_folder(path: str) -> str:
    """The folder whose config.json describes a model path ('smollm2', 'gemma3' → the exported folder,
    built once when missing). Only config.json is needed: the plan of a model whose weights are
    elsewhere works from its config."""
    shipped = shipped_folder(path)
    if shipped is not None:
        return shipped
    folder = os.path.abspath(os.path.expanduser(path))
    if not os.path.isfile(os.path.join(folder, "config.json")):
        raise FileNotFoundError(f"model folder {path!r}: no config.json in {folder} (the plan reads the "
                                f"architecture from it; a folder with only config.json is enough)")
    return folder


@functools.lru_cache(maxsize=16)
def model_shape(folder: str, kind: str = "causal_lm") -> ModelShape:
    """Counts parameters exactly by building the model on the meta device (no memory, no weights):
    ``kind`` is what a role loads (rlhf_ray/roles): causal_lm (learner, reference, rollout), value
    (the critic: the backbone of AutoModel plus a hidden→1 head, models/forward.py ValueModel) or
    classifier (reward: AutoModelForSequenceClassification with one label)."""
    import torch  # heavy: only when a plan is made
    from transformers import AutoConfig, AutoModel, AutoModelForCausalLM, AutoModelForSequenceClassification

    try:
        config = AutoConfig.from_pretrained(folder, local_files_only=True, **({"num_labels": 1} if kind == "classifier" else {}))
    except (ValueError, OSError, json.JSONDecodeError) as e:
        raise ValueError(f"{folder}/config.json: transformers cannot read it ({e})") from None
    cls = {"causal_lm": AutoModelForCausalLM, "value": AutoModel, "classifier": AutoModelForSequenceClassification}[kind]
    with torch.device("meta"):
        model = cls.from_config(config)
    params = sum(p.numel() for p in model.parameters())  # parameters() yields a tied weight once
    largest = max(sum(p.numel() for p in m.parameters(recurse=False)) for m in model.modules())
    text = config.get_text_config() if hasattr(config, "get_text_config") else config
    heads = text.num_attention_heads
    head_dim = getattr(text, "head_dim", None) or text.hidden_size // heads
    if kind == "value":
        params, largest = params + text.hidden_size, max(largest, text.hidden_size)
    linears = tuple((name.rsplit(".", 1)[-1], m.in_features, m.out_features) for name, m in model.named_modules()
                    if isinstance(m, torch.nn.Linear))
    return ModelShape(params, largest, text.num_hidden_layers, text.hidden_size, heads,
                      getattr(text, "num_key_value_heads", None) or heads, head_dim, text.vocab_size, linears)


def model_states(params: int, largest_layer: int, zero_stage: int, precision: str, n: int) -> dict[str, int]:
    """Weights, gradients and AdamW states of one rank of n, in bytes, without offload.

    bf16/fp16 (mixed precision): 16-bit weights (2), 16-bit + fp32 gradients (2 + 4), fp32 master
    weights and Adam m, v (12): 20 bytes/param at stage 0; stage 1 partitions the fp32 gradients and the
    optimizer, stage 2 also the 16-bit gradients: 2P + 18P/N, DeepSpeed's ZeRO-2 count. Stage 3 partitions
    everything and gathers one layer at a time (its 16-bit weights and gradients: 4L); DeepSpeed's ZeRO-3
    estimator counts 18P/N + 4L (gradients at 4 bytes: the 16-bit ones reduce-scatter into the fp32
    partition), and so does this. fp32: weights 4, gradients 4, Adam m, v 8 (stage 0: 16 bytes/param);
    DeepSpeed's ZeRO optimizers (stages 1-3) keep an fp32 copy of each rank's partition beside them (+4/N).
    """
    p, big = params, largest_layer
    if precision == "fp32":
        if zero_stage == 0:
            return {"weights": 4 * p, "gradients": 4 * p, "optimizer": 8 * p}
        weights = 4 * p // n + 4 * big if zero_stage == 3 else 4 * p
        grads = 4 * p // n + (4 * big if zero_stage == 3 else 0) if zero_stage >= 2 else 4 * p
        return {"weights": weights, "gradients": grads, "optimizer": 12 * p // n}
    if zero_stage == 0:
        return {"weights": 2 * p, "gradients": 6 * p, "optimizer": 12 * p}
    if zero_stage == 1:
        return {"weights": 2 * p, "gradients": 2 * p + 4 * p // n, "optimizer": 12 * p // n}
    if zero_stage == 2:
        return {"weights": 2 * p, "gradients": 6 * p // n, "optimizer": 12 * p // n}
    return {"weights": 2 * p // n + 2 * big, "gradients": 4 * p // n + 2 * big, "optimizer": 12 * p // n}


def activation_bytes(shape: ModelShape, rows: int, seq: int, dtype_bytes: int, checkpointing: bool,
                     training: bool = True) -> int:
    """Activations of one micro-batch of ``rows`` × ``seq`` tokens (Korthikanti et al. 2022, §4.1-4.2):
    34·s·b·h bytes per layer at 16 bits (no score matrices: fused attention); with checkpointing
    2·s·b·h per layer plus one layer recomputed; without gradients (scoring) one layer's worth."""
    sbh = rows * seq * shape.hidden
    layer = 34 * sbh * dtype_bytes // 2
    if not training:
        return layer
    if checkpointing:
        return shape.layers * 2 * sbh * dtype_bytes // 2 + layer
    return shape.layers * layer


def logit_bytes(shape: ModelShape, tokens: int, dtype_bytes: int, temperature: float, training: bool) -> int:
    """tokens × vocab × bytes: the logits in the model's dtype, their fp32 copy (``.float()`` in
    models/forward.py, when the model is 16-bit), the temperature-scaled copy (when ≠ 1), and in training
    the backward's fp32 softmax and logits gradient (8), or logsumexp's fp32 temporary in scoring (4)."""
    per = dtype_bytes + (4 if dtype_bytes < 4 else 0) + (4 if temperature != 1.0 else 0) + (8 if training else 4)
    return tokens * shape.vocab * per


@dataclass
class Estimate:
    """One actor's memory: ``parts`` on its GPU (GPU actors) or in its node's RAM (CPU actors)."""
    role: str
    on_gpu: bool
    parts: dict[str, int]
    host_load: int = 0  # GPU actors: host RAM while the weights are loaded (fp32, before moving to the GPU)
    notes: list[str] = field(default_factory=list)
    problem: str | None = None  # what cannot work whatever the device offers (e.g. no room for vLLM's KV cache)

    @property
    def total(self) -> int:
        return sum(self.parts.values())


def sequence_tokens(cfg: Config) -> tuple[int, int]:
    """(tokens of one row, of them the positions whose logits are kept): online, prompt + response with
    logits over the response (``logits_to_keep``); offline, ``offline.max_length`` for both (a bound)."""
    if cfg.is_online:
        return cfg.model.max_prompt_tokens + cfg.max_response_tokens, cfg.max_response_tokens + 1
    return cfg.offline.max_length, cfg.offline.max_length


def trained_estimate(cfg: Config, role: str, shape: ModelShape) -> Estimate:
    """A DeepSpeed rank: model states + one micro-batch's activations (+ logits for the policy)."""
    r = getattr(cfg, role)
    on_gpu = r.num_gpus_per_actor > 0
    seq, kept = sequence_tokens(cfg)
    rows = r.micro_batch_samples_per_actor * (2 if cfg.spec.update in ("preference", "reward") else 1)
    act = DTYPE_BYTES[r.precision]
    parts = model_states(shape.params, shape.largest_layer, r.zero_stage, r.precision, r.num_actors)
    notes = []
    if r.lora is not None:  # the base frozen (weights alone); the adapters carry gradients and Adam states
        adapter = shape.lora_params(r.lora.targets, r.lora.rank)
        base = parts["weights"]
        parts = model_states(adapter, 0, r.zero_stage, r.precision, r.num_actors)
        parts["weights"] += base
        notes.append(f"LoRA r={r.lora.rank}: {adapter / 1e6:.1f}M trained parameters")
    parts["activations"] = activation_bytes(shape, rows, seq, act, r.gradient_checkpointing)
    if role == "learner":
        parts["logits"] = logit_bytes(shape, rows * kept, act, cfg.rollout.temperature if cfg.is_online else 1.0, True)
    parts["runtime"] = GPU_RUNTIME if on_gpu else CPU_RUNTIME
    notes.insert(0, f"{shape.params / 1e9:.2f}B params, ZeRO-{r.zero_stage} over {r.num_actors}, {r.precision}, "
                    f"micro-batch {rows}×{seq} tokens" + (", checkpointing" if r.gradient_checkpointing else ""))
    return Estimate(role, on_gpu, parts, 4 * shape.params if on_gpu else 0, notes)


def scoring_estimate(cfg: Config, role: str, shape: ModelShape) -> Estimate:
    """Reference or reward model: fp32 weights (rlhf_ray/roles/reference.py and reward.py load float32,
    whatever model.dtype says) and one no-gradient micro-batch."""
    r = getattr(cfg, role)
    on_gpu = r.num_gpus_per_actor > 0
    seq, kept = sequence_tokens(cfg)
    rows = r.micro_batch_samples_per_actor
    tokens = r.micro_batch_tokens_per_actor or rows * seq
    parts = {"weights": 4 * shape.params,
             "activations": activation_bytes(shape, 1, tokens, 4, False, training=False)}
    if role == "reference":
        parts["logits"] = logit_bytes(shape, tokens * kept // seq, 4, cfg.rollout.temperature if cfg.is_online else 1.0, False)
    parts["runtime"] = GPU_RUNTIME if on_gpu else CPU_RUNTIME
    notes = [f"{shape.params / 1e9:.2f}B params in float32, scoring {tokens} tokens a pass"]
    return Estimate(role, on_gpu, parts, 4 * shape.params if on_gpu else 0, notes)


def rollout_estimate(cfg: Config, shape: ModelShape, gpu_bytes: int | None) -> Estimate:
    """vLLM (or HF generate) engine. On GPU: ``gpu_memory_utilization`` × each GPU's memory, the
    weights/TP inside it and the KV cache in what remains (vLLM refuses to start when one sequence of
    max_prompt_tokens + max_new_tokens does not fit it). On CPU: weights + ``cpu_kv_cache_gib``."""
    ro = cfg.rollout
    b = DTYPE_BYTES[cfg.model.dtype]
    tp = ro.tensor_parallel_size
    seq = cfg.model.max_prompt_tokens + cfg.max_response_tokens
    weights = shape.params * b // tp
    per_token = shape.kv_bytes_per_token(b) // tp
    if ro.num_gpus_per_actor <= 0:
        kv = int(ro.cpu_kv_cache_gib * GIB) if ro.backend == "vllm" else \
            per_token * seq * cfg.ppo.prompts_per_step_global * cfg.ppo.samples_per_prompt // ro.num_actors
        return Estimate("rollout", False, {"weights": weights, "kv cache": kv, "runtime": CPU_RUNTIME},
                        notes=[f"{ro.backend} on CPU, {cfg.model.dtype} weights"])
    if ro.backend == "hf":
        rows = cfg.ppo.prompts_per_step_global * cfg.ppo.samples_per_prompt // ro.num_actors
        return Estimate("rollout", True, {"weights": weights, "kv cache": per_token * seq * rows, "runtime": GPU_RUNTIME},
                        4 * shape.params, [f"transformers generate, {rows} rows at once"])
    if gpu_bytes is None:
        return Estimate("rollout", True, {"weights": weights}, notes=[
            f"vLLM takes {ro.gpu_memory_utilization:g} of each GPU: GPU memory unknown, only the weights are counted"])
    share = int(ro.gpu_memory_utilization * gpu_bytes)
    kv = share - weights
    est = Estimate("rollout", True, {f"vLLM share ({ro.gpu_memory_utilization:g} × GPU)": share}, notes=[
        f"inside: {cfg.model.dtype} weights {weights / GIB:.1f} GiB" + (f" (1/{tp} per GPU)" if tp > 1 else "")
        + f", KV cache ≤ {max(kv, 0) / GIB:.1f} GiB ≈ {max(kv, 0) // per_token:,} tokens"
        + f" = {max(kv, 0) // per_token // seq:,} sequences of {seq}"])
    if kv < per_token * seq:
        est.problem = (f"vLLM's share {share / GIB:.1f} GiB leaves {kv / GIB:.1f} GiB after the weights, less than one "
                       f"sequence of {seq} tokens needs ({per_token * seq / GIB:.2f} GiB): raise "
                       f"rollout.gpu_memory_utilization or rollout.tensor_parallel_size")
    return est


def role_model_kinds(cfg: Config) -> dict[str, tuple[str, str] | None]:
    """role → (model path, kind) for each active role, None for a reward that is no model and for
    environments (the folders of rlhf_ray/trainers/inputs.py model_paths, without needing weights)."""
    policy = cfg.learner.model_path or cfg.model.path
    out: dict[str, tuple[str, str] | None] = {}
    for role in cfg.roles:
        if role == "env":
            out[role] = None
        elif role in ("rollout", "learner"):
            out[role] = (policy, "causal_lm")
        elif role in ("critic", "reference"):
            out[role] = (getattr(cfg, role).model_path or cfg.model.path, "value" if role == "critic" else "causal_lm")
        elif cfg.spec.trained_role == "reward":
            out[role] = (cfg.reward.model_path or cfg.model.path, "classifier")
        elif cfg.reward.kind == "model":
            if not cfg.reward.model_path:
                raise ValueError("reward.kind=model needs reward.model_path")
            out[role] = (cfg.reward.model_path, "classifier")
        else:
            out[role] = None
    return out


def role_estimates(cfg: Config, gpu_bytes: int | None = None) -> dict[str, Estimate]:
    """One actor's estimate per active role (all ranks of a role alike); ``gpu_bytes``: memory of one GPU, for vLLM's share."""
    out = {}
    for role, model in role_model_kinds(cfg).items():
        if model is None:
            why = "environments hold no model" if role == "env" else f"reward.kind={cfg.reward.kind}: no model"
            out[role] = Estimate(role, False, {"runtime": CPU_RUNTIME}, notes=[why])
            continue
        shape = model_shape(model_folder(model[0]), model[1])
        if role == "rollout":
            out[role] = rollout_estimate(cfg, shape, gpu_bytes)
        elif role in cfg.spec.trained_roles:
            out[role] = trained_estimate(cfg, role, shape)
        else:
            out[role] = scoring_estimate(cfg, role, shape)
    return out
