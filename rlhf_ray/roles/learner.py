"""The learner: the policy under training, one DeepSpeed data-parallel rank per actor."""

from __future__ import annotations

import re
import time

import ray
import torch

from rlhf_ray.algos import sft_loss
from rlhf_ray.algos.objectives import policy_objective
from rlhf_ray.algos.offline import kto_objective, kto_reference_point_distributed, preference_objective
from rlhf_ray.batch import Batch, select
from rlhf_ray.models.forward import response_logprobs, sequence_logprobs
from rlhf_ray.models.loading import load_causal_lm
from rlhf_ray.models.wire import to_wire
from rlhf_ray.roles.ds_worker import DeepSpeedWorker


class PolicyLearner(DeepSpeedWorker):
    role = "learner"

    def init_model(self, model_path: str) -> int:
        model = load_causal_lm(model_path, torch.float32)
        self.check_packing(model)
        self._initialize(model)
        return sum(p.numel() for p in self.module.parameters())

    def compute_logprobs(self, batch: Batch) -> torch.Tensor:
        t = self.cfg.rollout.temperature
        return self._forward_eval(batch, lambda mb: response_logprobs(self.engine, mb, t, pack=self.pack)[0],
                                  per_token=True)

    def train_policy(self, batch: Batch, kl_coef: float) -> dict[str, float]:
        """ppo.epochs of the algorithm's policy objective (its row's POLICY_LOSSES entry and loss
        aggregation) on this rank's shard. Needs old_logprobs and advantages (and ref_logprobs when
        the KL penalty sits in the loss)."""
        ppo, temperature = self.cfg.ppo, self.cfg.rollout.temperature
        loss_name, agg = self.cfg.spec.objective, self.cfg.loss_agg

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

    # -- weight sync
    def push_weights(self, engines: list, version: int, bucket_mb: float) -> dict[str, float]:
        """Gathers full weights (ZeRO-3 needs every rank to join) and, on rank 0, sends them to all
        rollout engines in buckets of about ``bucket_mb`` MiB: one object-store put and one remote
        call per bucket per engine, never one per parameter."""
        import deepspeed

        start = time.perf_counter()
        zero3 = self.role_cfg.zero_stage == 3
        limit = bucket_mb * 2**20
        pending, bucket, size, sent = [], [], 0, 0

        def flush(last: bool):
            nonlocal bucket, size, sent
            ref = ray.put(bucket)
            pending.extend(e.load_weights.remote(ref, version, last) for e in engines)
            sent += size
            bucket, size = [], 0

        params = list(self.module.named_parameters())
        for i, (name, p) in enumerate(params):
            with deepspeed.zero.GatheredParameters([p], enabled=zero3):
                if self.rank == 0:
                    # A CPU parameter goes as a view: ray.put copies it before the next update. A
                    # gathered ZeRO-3 parameter is freed at the end of this block, so it is copied.
                    t = p.detach().to("cpu", copy=zero3)
                    bucket.append((name, *to_wire(t)))
                    size += t.numel() * t.element_size()
            # Cut buckets only between layers: vLLM rebuilds a fused q/k/v or gate/up layer from
            # one call's tensors, so splitting a layer across buckets would corrupt it.
            at_layer_end = i + 1 == len(params) or _layer_of(params[i + 1][0]) != _layer_of(name)
            if self.rank == 0 and size >= limit and at_layer_end:
                flush(last=False)
        if self.rank == 0:
            flush(last=True)
            ray.get(pending)
        seconds = time.perf_counter() - start
        return {"sync/bytes": float(sent), "sync/seconds": seconds,
                "sync/bytes_per_s": sent / seconds if seconds else 0.0}


def _layer_of(name: str) -> str:
    """'model.layers.3.self_attn.q_proj.weight' → 'model.layers.3'; other names stand alone."""
    m = re.match(r"^(.*?\.layers\.\d+)\.", name)
    return m.group(1) if m else name
