"""The rollout: a generation engine (vLLM; transformers as a slow fallback) inside one actor.

It returns token ids and the log-probs of the sampled tokens, and takes versioned weight updates
from the learner in buckets, through the object store or a broadcast group (rlhf_ray.sync). vLLM
runs in-process (no engine subprocess) so that the weights can be reloaded with a direct call, on
CPU and on a single GPU alike.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import ray
import torch

from rlhf_ray.algos.masked import logprobs_from_logits
from rlhf_ray.data.batch import build_batch
from rlhf_ray.envs.engines import VLLMTurns
from rlhf_ray.envs.format import TurnFormat
from rlhf_ray.envs.loop import Trajectory, TurnLoop
from rlhf_ray.models.forward import response_logprobs
from rlhf_ray.models.headers import weight_shapes
from rlhf_ray.models.loading import check_model_folder, load_causal_lm, load_tokenizer
from rlhf_ray.sync.vllm_lora import ServedAdapter, engine_lora_args
from rlhf_ray.sync.vllm_weights import (WORKER_EXTENSION, join_weight_group, load_weights_into_vllm,
                                          receive_into_vllm, vllm_prompt_logprobs)
from rlhf_ray.models.wire import unpack
from rlhf_ray.roles.base import Worker
from rlhf_ray.sync.adapter import check_adapter
from rlhf_ray.sync.buckets import receive_bucket
from rlhf_ray.sync.group import WeightGroup
from rlhf_ray.sync.manifest import BucketManifest, SyncReceipt, check_bucket


CPU_MAX_SEQS = 256  # requests decoded together on the CPU backend


class Rollout(Worker):
    role = "rollout"

    def init_model(self, model_path: str) -> int:
        self.version = 0
        self.trajectory_calls = 0
        self.model_path = model_path
        rc, mc, ec = self.cfg.rollout, self.cfg.model, self.cfg.env
        self.max_len = mc.max_prompt_tokens + self.cfg.max_response_tokens
        check_model_folder(model_path)
        if ec.enabled:
            self.tokenizer = load_tokenizer(model_path)
            self.turn_format = TurnFormat(self.tokenizer, ec.format, ec.observation_template)
        tied = bool(json.loads((Path(model_path) / "config.json").read_text()).get("tie_word_embeddings", False))
        self.receipt = SyncReceipt(f"rollout-{self.rank}", weight_shapes(model_path), tied,
                                   whole_first_sync=self.cfg.lora_sync != "merged")
        self.adapter: ServedAdapter | None = None  # sync.lora=adapter: the LoRA version this engine serves
        if rc.backend == "hf":
            self.engine = HFEngine(load_causal_lm(model_path, getattr(torch, mc.dtype)).to(self.device))
            return 0
        os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "0"
        if ray.util.get_node_ip_address().startswith("127."):
            # vLLM's gloo groups bind where the host name resolves (often the network address) unless told.
            os.environ.setdefault("GLOO_SOCKET_IFNAME", "lo")
        os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(max(1, round(rc.cpu_kv_cache_gib))))
        from vllm import LLM

        # vLLM rewinds a seeded request's generator when its prompt is prefilled in parts (chunked
        # prefill), which CPU generators cannot do ("CPU Generator does not use offset"): on CPU the
        # token budget of a step holds every running request's whole sequence, so none is split.
        lora = engine_lora_args(self.cfg.learner.lora.rank) if self.cfg.lora_sync == "adapter" else {}
        budget = {} if torch.cuda.is_available() else {"max_num_seqs": CPU_MAX_SEQS,
                                                       "max_num_batched_tokens": CPU_MAX_SEQS * self.max_len}
        self.engine = LLM(model=model_path, dtype=mc.dtype, enforce_eager=True, seed=self.cfg.trainer.seed + self.rank,
                          max_model_len=self.max_len, tensor_parallel_size=rc.tensor_parallel_size, **budget,
                          gpu_memory_utilization=rc.gpu_memory_utilization,
                          enable_prefix_caching=rc.enable_prefix_caching, disable_log_stats=True,
                          worker_extension_cls=WORKER_EXTENSION,  # weight updates run in vLLM's workers
                          # log-probs after temperature scaling, as the learner computes them
                          logprobs_mode="processed_logprobs", **lora)
        if lora:
            self.adapter = ServedAdapter(self.engine, self.receipt.engine)
        return 0

    @property
    def lora_request(self):
        """The adapter every request carries (sync.lora=adapter); None: the engine's own weights."""
        return self.adapter.request if self.adapter is not None else None

    def generate(self, prompt_ids: list[list[int]], greedy: bool = False, seed: int = 0) -> dict:
        """Samples one response per prompt (the controller repeats prompts for n samples).

        Returns response ids, their log-probs under the engine's weights, finish reasons, the weights
        version that produced them, and the seconds spent. Texts are decoded by the controller, so
        every backend yields the same strings."""
        rc = self.cfg.rollout
        start = time.perf_counter()
        temperature = 0.0 if greedy else rc.temperature
        top_p = 1.0 if greedy else rc.top_p
        if isinstance(self.engine, HFEngine):
            out = self.engine.generate(prompt_ids, rc.max_new_tokens, temperature, top_p, seed)
        else:
            out = self._vllm_generate(prompt_ids, temperature, top_p, seed)
        out.update(version=self.version, seconds=time.perf_counter() - start)
        return out

    def _vllm_generate(self, prompt_ids, temperature, top_p, seed) -> dict:
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        params = [SamplingParams(n=1, temperature=temperature, top_p=top_p, max_tokens=self.cfg.rollout.max_new_tokens,
                                 logprobs=0, seed=seed + i) for i in range(len(prompt_ids))]
        outs = self.engine.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False,
                                    lora_request=self.lora_request)
        ids, logps, reasons = [], [], []
        for o in outs:
            c = o.outputs[0]
            ids.append(list(c.token_ids))
            logps.append([lp[t].logprob for t, lp in zip(c.token_ids, c.logprobs)])
            reasons.append(c.finish_reason)
        return {"response_ids": ids, "logprobs": logps, "finish_reasons": reasons}

    def generate_trajectories(self, rows: list[dict], prompt_ids: list[list[int]], env_actors: list, greedy: bool = False,
                              seed: int = 0, call_id: str = "t") -> dict:
        """Multi-turn rollouts (rlhf_ray.envs.loop): one trajectory per prompt, with the environment actors.

        Returns per trajectory its response ids (turns and observations), the policy-token mask, the
        engine's log-probs (0 at observation tokens), how it ended, its last turn's text, the sum of the
        environment's rewards, whether an environment call failed, its turns and counters; and the
        weights version, the seconds spent, and the engine's busy and idle seconds."""
        rc = self.cfg.rollout
        start = time.perf_counter()
        engine = VLLMTurns(self.engine, 0.0 if greedy else rc.temperature, 1.0 if greedy else rc.top_p,
                           self.lora_request)
        loop = TurnLoop(engine, env_actors, self.turn_format, self.tokenizer, self.cfg.env, rc.max_new_tokens)
        # Keys name requests in the engine and environments on their actors: unique to this call.
        self.trajectory_calls += 1
        trajs = [Trajectory(f"{call_id}.{self.rank}.{self.trajectory_calls}-{seed + i}", seed + i, row, list(p))
                 for i, (row, p) in enumerate(zip(rows, prompt_ids))]
        timing = loop.run(trajs)
        results = [t.result() for t in trajs]
        out = {k: [r[k] for r in results] for k in results[0]}
        out["finish_reasons"] = out.pop("finish_reason")
        out["texts"] = out.pop("text")
        out.update(timing, version=self.version, seconds=time.perf_counter() - start)
        return out

    # -- weight sync (rlhf_ray.sync): every bucket checked against its manifest and this engine's model
    def load_weights(self, manifest: BucketManifest, bucket: list[tuple]) -> int:
        """sync.transport=object_store: one bucket of (name, array, dtype) entries from the object store
        (rlhf_ray.models.wire). The version is set once the last bucket is in."""
        self.receipt.accept(manifest)
        named = unpack(bucket)
        check_bucket(manifest, named, self.cfg.sync.verify, self.receipt.engine)
        if isinstance(self.engine, HFEngine):
            self.engine.load_weights(named)
        else:
            load_weights_into_vllm(self.engine, named)
        return self._bucket_done(manifest)

    def load_adapter(self, version: int, config_json: str, bucket: list[tuple]) -> int:
        """sync.lora=adapter: the learner's LoRA adapter (rlhf_ray.sync.adapter), checked against this
        engine's model, served from now on as ``version``."""
        if self.adapter is None:
            raise RuntimeError(f"{self.receipt.engine}: got an adapter, but the engine was not started to serve "
                               f"LoRA (sync.lora resolved to {self.cfg.lora_sync!r})")
        named = unpack(bucket)
        check_adapter(named, self.receipt.model_shapes, ServedAdapter.rank(config_json), self.receipt.engine)
        self.adapter.load(version, config_json, named)
        self.version = version
        return version

    def served_adapter(self) -> dict:
        """The adapter this engine serves: its version and fingerprint (rlhf_ray.models.lora.adapter_digest)."""
        return {"version": self.version, "digest": self.adapter.digest if self.adapter else "",
                "lora_request": self.lora_request.lora_name if self.lora_request else None}

    def join_weight_group(self, addr: str, port: int, world_size: int, first_ranks: dict[int, int]) -> int:
        """sync.transport=collective: this engine's workers join the learner's weight group as ranks
        first_ranks[rank], +1, ... (one per tensor-parallel worker)."""
        args = (addr, port, first_ranks[self.rank], world_size, self.cfg.sync.group_timeout_s,
                ray.util.get_node_ip_address())
        if isinstance(self.engine, HFEngine):
            self.engine.join_weight_group(*args)
        else:
            join_weight_group(self.engine, *args)
        return first_ranks[self.rank]

    def receive_weights(self, manifest: BucketManifest) -> int:
        """sync.transport=collective: one bucket by broadcast from the learner, into every worker."""
        self.receipt.accept(manifest)
        if isinstance(self.engine, HFEngine):
            self.engine.receive(manifest, self.cfg.sync.verify, self.receipt.engine)
        else:
            receive_into_vllm(self.engine, manifest, self.cfg.sync.verify, self.receipt.engine)
        return self._bucket_done(manifest)

    def _bucket_done(self, manifest: BucketManifest) -> int:
        if manifest.last:
            self.receipt.finish()
            self.version = manifest.version
        return self.version

    def get_version(self) -> int:
        return self.version

    def choice_logprobs(self, prompt_ids: list[list[int]], choice_ids: list[int]) -> dict:
        """``choices``: for each prompt, log P(c | the next token is one of ``choice_ids``) for each c: an
        LLM judge's verdict read from its next-token distribution, not parsed from sampled text (no
        unparseable answers, and a soft preference where the judge hesitates); and the weights ``version``."""
        if isinstance(self.engine, HFEngine):
            return {"choices": self.engine.choice_logprobs(prompt_ids, choice_ids), "version": self.version}
        from vllm import SamplingParams
        from vllm.inputs import TokensPrompt

        # Sampling restricted to the choices: the processed log-probs are then over them alone.
        params = SamplingParams(max_tokens=1, temperature=0.0, logprobs=len(choice_ids), allowed_token_ids=choice_ids)
        outs = self.engine.generate([TokensPrompt(prompt_token_ids=p) for p in prompt_ids], params, use_tqdm=False,
                                    lora_request=self.lora_request)
        rows = []
        for o in outs:
            top = o.outputs[0].logprobs[0]
            logits = torch.tensor([top[c].logprob if c in top else -float("inf") for c in choice_ids])
            rows.append(torch.log_softmax(logits, 0).tolist())
        return {"choices": rows, "version": self.version}

    def score_logprobs(self, prompt_ids: list[list[int]], response_ids: list[list[int]]) -> list[list[float]]:
        """Log-probs of given responses under the served weights: a layout-independent fingerprint
        of what the engine holds (vLLM on CPU packs its weights into kernels that cannot be read back),
        compared with the learner's log-probs to check a weight sync end to end."""
        if isinstance(self.engine, HFEngine):
            batch = build_batch(prompt_ids, response_ids, pad_id=0)
            with torch.no_grad():
                logp = response_logprobs(self.engine.model, batch)[0].cpu()
            return [row[:len(r)].tolist() for row, r in zip(logp, response_ids)]
        return [vllm_prompt_logprobs(self.engine, p + r, self.lora_request)[-len(r):]
                for p, r in zip(prompt_ids, response_ids)]


class HFEngine:
    """transformers `generate` behind the rollout interface: slow, but needs no vLLM."""

    def __init__(self, model):
        self.model = model.eval()

    @torch.no_grad()
    def generate(self, prompt_ids, max_new_tokens, temperature, top_p, seed) -> dict:
        torch.manual_seed(seed)
        device = next(self.model.parameters()).device
        eos = self.model.generation_config.eos_token_id
        eos = eos if isinstance(eos, list) else [eos]
        ids, logps = [], []
        for p in prompt_ids:  # one at a time: no padding subtleties, and this path is for debugging
            x = torch.tensor([p], device=device)
            kw = dict(do_sample=True, temperature=temperature, top_p=top_p) if temperature > 0 else dict(do_sample=False)
            out = self.model.generate(x, max_new_tokens=max_new_tokens, output_logits=True, return_dict_in_generate=True,
                                      pad_token_id=eos[0], top_k=0, **kw)
            resp = out.sequences[0, len(p):].tolist()
            logits = torch.stack(out.logits, 1)[0, :len(resp)].float() / (temperature or 1.0)
            ids.append(resp)
            logps.append(logprobs_from_logits(logits[None], torch.tensor([resp], device=device))[0].tolist())
        return {"response_ids": ids, "logprobs": logps,
                "finish_reasons": ["stop" if r and r[-1] in eos else "length" for r in ids]}

    @torch.no_grad()
    def choice_logprobs(self, prompt_ids, choice_ids) -> list[list[float]]:
        device = next(self.model.parameters()).device
        rows = []
        for p in prompt_ids:
            logits = self.model(torch.tensor([p], device=device)).logits[0, -1, choice_ids].float()
            rows.append(torch.log_softmax(logits, 0).tolist())
        return rows

    def load_weights(self, named_tensors) -> None:
        params = dict(self.model.named_parameters(remove_duplicate=False))
        with torch.no_grad():
            for name, t in named_tensors:
                params[name].copy_(t)

    def join_weight_group(self, addr, port, rank, world_size, timeout_s, local_addr) -> None:
        self.weight_group = WeightGroup(addr, port, rank, world_size, timeout_s, local_addr)

    def receive(self, manifest: BucketManifest, verify: bool, engine: str) -> None:
        self.load_weights(receive_bucket(self.weight_group, manifest, verify, engine))
