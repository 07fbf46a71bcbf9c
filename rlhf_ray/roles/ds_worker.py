"""DeepSpeed plumbing shared by the trainable roles (learner and critic).

Each actor is one data-parallel rank. Ray gives each GPU actor its own CUDA_VISIBLE_DEVICES, so the
local rank is always 0; ranks meet over NCCL on GPUs and gloo on CPU, at the address of rank 0.
"""

from __future__ import annotations

import json
import os
import socket

import ray
import torch

from rlhf_ray.algos import Normalizer
from rlhf_ray.config import Config, TrainableRole
from rlhf_ray.data.batch import Batch, batch_size, micro_batches, select
from rlhf_ray.models.loading import load_tokenizer
from rlhf_ray.runs.checkpoint import rng_state, safe_checkpoint_engine, set_rng_state
from rlhf_ray.models.lora import (adapter_config_json, adapter_parameters, apply_lora, hf_name, merged_parameters,
                                  save_adapter)
from rlhf_ray.cluster.rendezvous import bind, is_loopback, tcp_store
from rlhf_ray.roles.base import Worker
from rlhf_ray.roles.grad_norm import step_grad_norm


class DeepSpeedWorker(Worker):
    """A rank of a DeepSpeed-trained role; subclasses build the model and the loss. With
    ``<role>.lora`` the model is wrapped in LoRA adapters (rlhf_ray.models.lora) before DeepSpeed
    sees it: only the adapters and the subclass's ``lora_heads`` train and sit in the optimizer."""

    lora_heads: tuple[str, ...] = ()  # modules trained in full beside the adapters (a value or score head)
    causal_lm = False  # PEFT's CAUSAL_LM task type: its saved adapter loads with PeftModelForCausalLM

    def __init__(self, cfg: Config, rank: int = 0, world_size: int = 1):
        super().__init__(cfg, rank, world_size)
        self.role_cfg: TrainableRole = getattr(cfg, self.role)
        self.engine = None
        self._store_socket: socket.socket | None = None

    # -- group setup: the controller asks rank 0 for an address, then calls setup on every rank
    def master_address(self) -> tuple[str, int]:
        """Where the group meets: this node's address and a free port on it, which stays bound here
        until ``setup_distributed`` hands it to the rendezvous store (so nothing can take it meanwhile)."""
        addr = ray.util.get_node_ip_address()
        if self._store_socket is not None:
            self._store_socket.close()
        self._store_socket = bind(addr)
        return addr, self._store_socket.getsockname()[1]

    def setup_distributed(self, addr: str, port: int) -> None:
        """Joins the group at ``addr:port``, where rank 0 serves the rendezvous store. The store listens
        on that address only: torch's own rendezvous (env://, what deepspeed.init_distributed uses)
        listens on every interface, unauthenticated, for the whole run. On a loopback address gloo's
        and NCCL's sockets stay on ``lo`` too."""
        import deepspeed
        from deepspeed.constants import default_pg_timeout

        os.environ.update(MASTER_ADDR=addr, MASTER_PORT=str(port), RANK=str(self.rank),
                          WORLD_SIZE=str(self.world_size), LOCAL_RANK="0", LOCAL_WORLD_SIZE="1")
        if is_loopback(addr):
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
            os.environ.setdefault("NCCL_SOCKET_IFNAME", "lo")
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        held, self._store_socket = self._store_socket, None  # the port master_address reserved (rank 0)
        store = tcp_store(addr, port, self.world_size, self.rank, default_pg_timeout.total_seconds(), held)
        torch.distributed.init_process_group(backend, store=store, rank=self.rank, world_size=self.world_size,
                                             timeout=default_pg_timeout)
        deepspeed.init_distributed(dist_backend=backend, auto_mpi_discovery=False)  # adopts the group above

    def ds_config(self) -> dict:
        r = self.role_cfg
        per_actor = self.cfg.optimizer_batch_global // self.world_size
        accum = per_actor // r.micro_batch_samples_per_actor
        return {
            "train_micro_batch_size_per_gpu": r.micro_batch_samples_per_actor,
            "gradient_accumulation_steps": accum,
            "train_batch_size": r.micro_batch_samples_per_actor * accum * self.world_size,
            "gradient_clipping": r.max_grad_norm,
            "zero_optimization": {"stage": r.zero_stage, "overlap_comm": False},
            "bf16": {"enabled": r.precision == "bf16"},
            "fp16": {"enabled": r.precision == "fp16"},
            # torch's AdamW: no C++/CUDA op build on first use, works on every accelerator.
            "optimizer": {"type": "AdamW", "params": {"lr": r.lr, "betas": list(r.adam_betas),
                                                       "weight_decay": r.weight_decay, "eps": r.adam_eps,
                                                       "torch_adam": True}},
            "steps_per_print": 10**9,
            "wall_clock_breakdown": False,
        }

    @property
    def lora(self) -> bool:
        return self.role_cfg.lora is not None

    def _initialize(self, model: torch.nn.Module) -> None:
        import deepspeed

        if self.role_cfg.gradient_checkpointing:
            # Non-reentrant: with frozen embeddings (LoRA) the reentrant variant would see no input needing
            # a gradient and drop the adapters' gradients inside each checkpointed layer.
            model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if self.lora:
            model = apply_lora(model, self.role_cfg.lora, f"{self.role}.lora", self.lora_heads, self.causal_lm)
        self.engine, *_ = deepspeed.initialize(
            model=model, model_parameters=[p for p in model.parameters() if p.requires_grad],
            config=self.ds_config())
        self.engine.checkpoint_engine = safe_checkpoint_engine(self.engine._config)
        if self.lora:
            exclude_frozen_aliases(self.engine)

    @property
    def module(self) -> torch.nn.Module:
        return self.engine.module

    def parameter_counts(self) -> dict[str, int]:
        """This rank's model: all parameters, those that train, the LoRA factors among them, and the
        elements of Adam's first moment this rank's optimizer holds (0 before the first step; under
        ZeRO the rank's partition, padded)."""
        def numel(p):
            return getattr(p, "ds_numel", p.numel())  # ZeRO-3 leaves an empty placeholder on the module

        named = list(self.module.named_parameters())
        inner = getattr(self.engine.optimizer, "optimizer", self.engine.optimizer)
        return {"total": sum(numel(p) for _, p in named),
                "trainable": sum(numel(p) for _, p in named if p.requires_grad),
                "lora": sum(numel(p) for n, p in named if ".lora_" in n),
                "in_optimizer": sum(s["exp_avg"].numel() for s in inner.state.values() if "exp_avg" in s)}

    # -- the PPO-style update loop: epochs × shuffled minibatches × micro-batches
    def _train_epochs(self, batch: Batch, loss_fn, epochs: int = 1) -> dict[str, float]:
        """Runs ``loss_fn(micro, norm) -> (loss, metrics)`` over this rank's shard: ``epochs`` passes,
        each over shuffled minibatches of one optimiser step (``cfg.optimizer_batch_global`` / ranks
        samples, accumulated in micro-batches). Returns the metrics averaged over micro-batches."""
        self.engine.train()
        per_actor = self.cfg.optimizer_batch_global // self.world_size
        micro = self.role_cfg.micro_batch_samples_per_actor
        g = torch.Generator().manual_seed(self.cfg.trainer.seed + self.rank + 7919 * self._updates)

        def steps():
            for _ in range(epochs):
                order = torch.randperm(batch_size(batch), generator=g)
                for start in range(0, len(order), per_actor):
                    yield list(micro_batches(select(batch, order[start:start + per_actor]), micro))

        return self._run_steps(steps(), loss_fn)

    def _run_steps(self, steps, loss_fn, rows_per_unit: int = 1) -> dict[str, float]:
        """backward + step on each micro-batch of each optimiser step (DeepSpeed steps the optimiser
        at its accumulation boundary). Returns the loss_fn metrics averaged over micro-batches, the lr,
        and ``grad_norm``: the L2 norm of each applied step's whole gradient before clipping
        (``step_grad_norm``), averaged over the call's optimiser steps.

        Each loss is the micro-batch's share of the step's mean: its sum over the step's counts on
        every rank (``step_normalizer``). DeepSpeed divides every micro-batch's loss by the
        accumulation steps and averages gradients over ranks; multiplying by both undoes that, so
        the step's gradient is the gradient of the documented mean (rlhf_ray.algos.aggregate)."""
        sums: dict[str, float] = {}
        count = 0
        norms: list[float] = []
        scale = self.engine.gradient_accumulation_steps() * self.world_size
        for micro in steps:
            norm = self.step_normalizer(micro, rows_per_unit)
            for mb in micro:
                loss, metrics = loss_fn(mb, norm)
                self.engine.backward(loss * scale)
                # At the boundary the gradient is whole (reduced over ranks) until step() clips, applies
                # and frees it: read it in between.
                grad_norm = step_grad_norm(self.engine) if self.engine.is_gradient_accumulation_boundary() else None
                self.engine.step()
                if grad_norm is not None and self.engine.was_step_applied():  # fp16 overflow: step skipped
                    norms.append(grad_norm)
                for k, v in metrics.items():
                    sums[k] = sums.get(k, 0.0) + float(v)
                count += 1
        self._updates += 1
        out = {k: v / max(count, 1) for k, v in sums.items()}
        if norms:  # no applied step, no figure: a 0 would read as a vanished gradient
            out["grad_norm"] = sum(norms) / len(norms)
        out["lr"] = self.engine.get_lr()[0]
        out["peak_memory_gib"] = self.peak_memory_gib()
        return out

    def step_normalizer(self, micro: list[Batch], rows_per_unit: int = 1) -> Normalizer:
        """Response tokens, sequences and units (of ``rows_per_unit`` rows) of one optimiser step:
        this rank's micro-batches, summed over the data-parallel ranks."""
        horizon = self.cfg.max_response_tokens
        parts = [Normalizer.of(mb["response_mask"], rows_per_unit, horizon) for mb in micro]
        mine = sum(parts[1:], parts[0])
        if self.world_size == 1:
            return mine
        counts = torch.tensor([mine.tokens, mine.sequences, mine.units], dtype=torch.float64)
        torch.distributed.all_reduce(counts)
        return Normalizer(*counts.tolist(), horizon=horizon)

    _updates = 0

    @torch.no_grad()
    def _forward_eval(self, batch: Batch, fn, per_token: bool = False) -> torch.Tensor:
        self.engine.eval()
        return self.map_forward(batch, fn, per_token)

    # -- offline methods: one optimiser step per call
    def _train_step(self, batch: Batch, loss_fn, rows_per_unit: int = 1) -> dict[str, float]:
        """One optimiser step over this rank's shard: micro-batches of
        ``micro_batch_samples_per_actor`` units, each unit ``rows_per_unit`` adjacent rows (a pair's
        chosen and rejected) that stay together. Unlike ``_train_epochs`` nothing is shuffled here:
        the controller samples the batch, and shuffling rows would separate pairs."""
        units, rem = divmod(batch_size(batch), rows_per_unit)
        expected = self.cfg.optimizer_batch_global // self.world_size
        if rem or units != expected:
            # DeepSpeed steps the optimiser every `expected / micro` micro-batches; any other count
            # would silently shift that boundary into the next call.
            raise ValueError(f"{self.role}-{self.rank}: got {batch_size(batch)} rows, expected {expected} units of "
                             f"{rows_per_unit} rows (optimiser batch / {self.world_size} ranks)")
        self.engine.train()
        micro = self.role_cfg.micro_batch_samples_per_actor * rows_per_unit
        return self._run_steps([list(micro_batches(batch, micro))], loss_fn, rows_per_unit)

    def save_hf(self, path: str, tokenizer_from: str, adapter_path: str | None = None) -> str:
        """Writes the model as an HF folder (safetensors, config, tokenizer from ``tokenizer_from``)
        that `from_pretrained` and vLLM load; with LoRA the adapters merged in, and (``adapter_path``)
        the adapter alone as a PEFT folder. Every rank must call it: under ZeRO-3 the full weights
        are gathered one parameter at a time (collectively), and rank 0 writes them."""
        import deepspeed

        zero3, source = self.role_cfg.zero_stage == 3, self.rank == 0
        if self.lora:
            state = dict(merged_parameters(self.module, zero3, source))
            adapter = list(adapter_parameters(self.module, zero3, source)) if adapter_path else []
            model = self.module.get_base_model()
        else:
            state, adapter, model = {}, [], self.module
            for name, p in self.module.named_parameters():
                with deepspeed.zero.GatheredParameters([p], enabled=zero3):
                    if source:
                        state[name] = p.detach().to("cpu", copy=True)
        if source:
            saved = {hf_name(n) for n in self.module.state_dict()}  # persistent buffers only
            for name, b in self.module.named_buffers():
                if hf_name(name) in saved:
                    state.setdefault(hf_name(name), b.detach().to("cpu", copy=True))
            model.save_pretrained(path, state_dict=state, safe_serialization=True)
            load_tokenizer(tokenizer_from).save_pretrained(path)
            if adapter:
                save_adapter(adapter_path, adapter, adapter_config_json(self.module))
        return path

    # -- checkpoints: every rank saves and loads its own partition (ZeRO), collectively
    def save_state(self, folder: str) -> None:
        """DeepSpeed state (weights, optimizer, scheduler) plus this rank's update count and RNG."""
        # With LoRA the frozen base is the model folder's: the checkpoint holds the adapters (and heads) alone.
        self.engine.save_checkpoint(folder, tag="state", save_latest=False, exclude_frozen_parameters=self.lora)
        with open(os.path.join(folder, f"rank{self.rank}.json"), "w") as f:
            json.dump({"updates": self._updates, "rng": rng_state()}, f)

    def load_state(self, folder: str) -> int:
        path, _ = self.engine.load_checkpoint(folder, tag="state", load_optimizer_states=True,
                                              load_lr_scheduler_states=True, load_module_strict=not self.lora)
        if path is None:
            raise FileNotFoundError(f"{self.role}-{self.rank}: no DeepSpeed state in {folder}")
        with open(os.path.join(folder, f"rank{self.rank}.json")) as f:
            state = json.load(f)
        self._updates = state["updates"]
        set_rng_state(state["rng"])
        return self._updates


def exclude_frozen_aliases(engine) -> None:
    """Checkpoints without the frozen base, tied weights included. DeepSpeed's
    ``exclude_frozen_parameters`` drops the frozen names ``named_parameters()`` lists, which names a
    tied weight once: SmolLM2's head (an alias of the frozen embedding, 113 MB) would stay in every
    LoRA checkpoint. Every name of a frozen parameter, aliases too, is dropped here."""
    saved_state = engine.module_state_dict

    def module_state_dict(destination=None, prefix="", keep_vars=False, exclude_frozen_parameters=False):
        state = saved_state(destination, prefix, keep_vars, exclude_frozen_parameters)
        if exclude_frozen_parameters:
            for name, p in engine.module.named_parameters(prefix=prefix.rstrip("."), remove_duplicate=False):
                if not p.requires_grad:
                    state.pop(name, None)
        return state

    engine.module_state_dict = module_state_dict

