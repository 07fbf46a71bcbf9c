"""The learner: the policy under training, one DeepSpeed data-parallel rank per actor."""

from __future__ import annotations

import time

import ray
import torch

from rlhf_ray.algos import sft_loss
from rlhf_ray.algos.objectives import policy_objective
from rlhf_ray.algos.offline import kto_objective, kto_reference_point_distributed, preference_objective
from rlhf_ray.cluster.rendezvous import bind
from rlhf_ray.data.batch import Batch, select
from rlhf_ray.models.forward import response_logprobs, sequence_logprobs
from rlhf_ray.models.loading import load_causal_lm
from rlhf_ray.models.lora import adapter_config_json, adapter_digest, adapter_parameters, merged_parameters
from rlhf_ray.roles.ds_worker import DeepSpeedWorker
from rlhf_ray.sync.adapter import send_adapter
from rlhf_ray.sync.buckets import layer_buckets
from rlhf_ray.sync.group import WeightGroup
from rlhf_ray.sync.send import BucketSender, sync_metrics


class PolicyLearner(DeepSpeedWorker):
    role = "learner"
    causal_lm = True

    def init_model(self, model_path: str) -> int:
        model = load_causal_lm(model_path, torch.float32)
        self.check_packing(model)
        self._initialize(model)
        return sum(p.numel() for p in self.module.parameters())

    def compute_logprobs(self, batch: Batch) -> torch.Tensor:
        t = self.cfg.rollout.temperature
        return self._forward_eval(batch, lambda mb: response_logprobs(self.engine, mb, t, pack=self.pack)[0],
                                  per_token=True)

    # -- the reference for free (reference.source=learner_base): the same forward, adapters off
    def compute_base_logprobs(self, batch: Batch) -> torch.Tensor:
        """The reference's token log-probs: the frozen base the adapters sit on, i.e. the initial policy."""
        with self.module.disable_adapter():
            return self.compute_logprobs(batch)

    def compute_base_sequence_logprobs(self, batch: Batch) -> torch.Tensor:
        """The reference's [B, 2] summed response log-probs and token counts (offline methods)."""
        with self.module.disable_adapter():
            return self.compute_sequence_logprobs(batch)

    def train_policy(self, batch: Batch, kl_coef: float) -> dict[str, float]:
        """ppo.epochs of the algorithm's policy objective (its row's POLICY_LOSSES entry and loss
        aggregation) on this rank's shard. Needs old_logprobs and advantages (and ref_logprobs when
        the KL penalty sits in the loss)."""
        ppo, temperature = self.cfg.ppo, self.cfg.rollout.temperature
        loss_name, agg = self.cfg.spec.objective, ppo.loss_agg

        def loss_fn(mb: Batch, norm):
            logp, entropy = response_logprobs(self.engine, mb, temperature, with_entropy=True, pack=self.pack)
            return policy_objective(ppo, loss_name, agg, logp, entropy, mb, kl_coef, norm)

        start = time.perf_counter()
        metrics = self._train_epochs(batch, loss_fn, ppo.epochs)
        metrics["compute_s"] = time.perf_counter() - start
        return {f"learner/{k}": v for k, v in metrics.items()}

    def train_sft(self, batch: Batch) -> dict[str, float]:
        """Next-token loss on the response tokens only (prompt tokens are context, not targets).
        One pass over this rank's shard; its size should be a multiple of one optimiser step."""
        def loss_fn(mb: Batch, norm):
            logp, _ = response_logprobs(self.engine, mb, pack=self.pack)
            mask = mb["response_mask"]
            return sft_loss(logp, mask, norm), {"sft_loss": sft_loss(logp.detach(), mask).item()}

        start = time.perf_counter()
        metrics = self._train_epochs(batch, loss_fn)
        metrics["compute_s"] = time.perf_counter() - start
        return {f"learner/{k}": v for k, v in metrics.items()}

    # -- offline methods (DPO and kin, KTO): one optimiser step per call on this rank's shard
    def compute_sequence_logprobs(self, batch: Batch) -> torch.Tensor:
        """[B, 2]: each row's summed response log-prob and response token count (no gradient)."""
        return self._forward_eval(batch, lambda mb: sequence_logprobs(self.engine, mb, self.pack))

    def train_preference(self, batch: Batch) -> dict[str, float]:
        """One step of the algorithm's preference loss (its row's PREFERENCE_LOSSES entry) on adjacent
        (chosen, rejected) rows; needs ``ref_logps`` [rows] unless the loss is reference-free."""
        def loss_fn(mb: Batch, norm):
            out = sequence_logprobs(self.engine, mb, self.pack)
            return preference_objective(self.cfg.spec.objective, self.cfg.offline, out[:, 0], mb["response_lengths"],
                                        mb.get("ref_logps"), norm)

        return self._offline_step(batch, loss_fn, rows_per_unit=2)

    def train_unpaired(self, batch: Batch) -> dict[str, float]:
        """One KTO step on adjacent (completion, mismatched completion) rows with ``labels`` and
        ``ref_logps``. The mismatched rows only estimate the reference point z0 (no gradient, as in
        the paper), over the whole global batch."""
        n = batch["input_ids"].shape[0]
        mismatched = select(batch, torch.arange(1, n, 2))
        policy_mm = self._forward_eval(mismatched, lambda mb: sequence_logprobs(self.engine, mb, self.pack))[:, 0]
        z0 = kto_reference_point_distributed(policy_mm, mismatched["ref_logps"])
        matched = select(batch, torch.arange(0, n, 2))

        def loss_fn(mb: Batch, norm):
            logps = sequence_logprobs(self.engine, mb, self.pack)[:, 0]
            return kto_objective(self.cfg.offline, logps, mb["ref_logps"], mb["labels"], z0, norm)

        return self._offline_step(matched, loss_fn, rows_per_unit=1)

    def _offline_step(self, batch: Batch, loss_fn, rows_per_unit: int) -> dict[str, float]:
        start = time.perf_counter()
        metrics = self._train_step(batch, loss_fn, rows_per_unit)
        metrics["compute_s"] = time.perf_counter() - start
        return {f"learner/{k}": v for k, v in metrics.items()}

    # -- weight sync (rlhf_ray.sync)
    def weight_group_address(self) -> tuple[str, int]:
        """Where the weight-sync group meets (rank 0): this node's address and a port held bound on it."""
        addr = ray.util.get_node_ip_address()
        self._weight_socket = bind(addr)
        return addr, self._weight_socket.getsockname()[1]

    def join_weight_group(self, addr: str, port: int, world_size: int) -> None:
        """Rank 0 becomes the source (rank 0) of a new weight group with the engines' workers."""
        if self.rank != 0:
            return
        if getattr(self, "weight_group", None) is not None:
            self.weight_group.close()
        held, self._weight_socket = self._weight_socket, None
        self.weight_group = WeightGroup(addr, port, 0, world_size, self.cfg.sync.group_timeout_s, addr, held)

    def push_weights(self, engines: list, version: int) -> dict[str, float]:
        """Gathers full weights (ZeRO-3 needs every rank to join) and, on rank 0, sends them to every
        rollout engine in layer-aligned buckets of about sync.bucket_mb MiB by sync.transport: one
        object-store put or one broadcast per bucket, never one call per parameter. A LoRA learner
        sends its adapter alone (cfg.lora_sync "adapter", rlhf_ray.sync.adapter) or the merged weights
        of the layers it touches ("merged")."""
        start = time.perf_counter()
        sync, mode = self.cfg.sync, self.cfg.lora_sync
        zero3, source, to_host = self.role_cfg.zero_stage == 3, self.rank == 0, sync.transport == "object_store"
        if mode == "adapter":
            named = list(adapter_parameters(self.module, zero3, source))
            return send_adapter(engines, version, named, adapter_config_json(self.module)) if source else {}
        if mode == "merged":
            named = merged_parameters(self.module, zero3, source, touched_only=True, to_host=to_host)
        else:
            named = self._full_parameters(to_host=to_host)
        if self.rank != 0:
            for _ in named:  # joins rank 0's gathers
                pass
            return {}
        sender = BucketSender(engines, version, self.weight_group if sync.transport == "collective" else None,
                              checksum=sync.verify)
        for bucket, last in layer_buckets(named, sync.bucket_mb * 2**20):
            sender.send(bucket, last)
        sender.finish()
        seconds = time.perf_counter() - start
        return sync_metrics(sender.bytes, sender.buckets, seconds, sender.seconds)

    def adapter_digest(self) -> str:
        """Fingerprint of the current adapter (rlhf_ray.models.lora.adapter_digest), as an engine reports it."""
        named = list(adapter_parameters(self.module, self.role_cfg.zero_stage == 3, self.rank == 0))
        return adapter_digest(named) if self.rank == 0 else ""

    def _full_parameters(self, to_host: bool):
        """(name, full tensor) of every parameter in order on rank 0, (name, None) on the others; under
        ZeRO-3 each is gathered from all ranks while it is taken."""
        import deepspeed

        zero3 = self.role_cfg.zero_stage == 3
        for name, p in self.module.named_parameters():
            with deepspeed.zero.GatheredParameters([p], enabled=zero3):
                if self.rank != 0:
                    yield name, None
                # A host tensor goes as a view (the bucket is copied out before the next update); a
                # gathered ZeRO-3 parameter is freed when this block ends, so it is copied.
                elif to_host:
                    yield name, p.detach().to("cpu", copy=zero3)
                else:
                    yield name, p.detach().clone() if zero3 else p.detach()
