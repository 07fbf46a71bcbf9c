"""vLLM (CPU) serves the same log-probs as transformers, before and after a live weight load."""
import gc
import os

import pytest
import torch

from rlhf_ray.models.tiny import build_tiny_model
from rlhf_ray.sync.vllm_weights import (
    WORKER_EXTENSION,
    _check_fused_groups,
    load_weights_into_vllm,
    vllm_named_parameters,
    vllm_prompt_logprobs,
)

# > 128 tokens, so at least one full KV block lands in the prefix cache and a stale cache
# after the weight load would show up as wrong log-probs.
LONG_PROMPT = "<|im_start|>user\n" + " ".join(f"What is {i} + {i + 1}?" for i in range(22)) + "<|im_end|>\n"
PROMPTS = [LONG_PROMPT, "<|im_start|>user\nWhat is 2 + 3?<|im_end|>\n<|im_start|>assistant\n"]
LLM_KWARGS = dict(dtype="float32", enforce_eager=True, max_model_len=512, kv_cache_memory_bytes=64 * 2**20, seed=0)


def test_partial_fused_group_is_rejected():
    _check_fused_groups(["model.layers.0.mlp.down_proj.weight", "lm_head.weight"])
    _check_fused_groups([f"model.layers.0.self_attn.{p}_proj.weight" for p in "qkv"])
    with pytest.raises(ValueError, match="up_proj"):
        _check_fused_groups(["model.layers.0.mlp.gate_proj.weight"])
    with pytest.raises(ValueError, match="k_proj.bias"):
        _check_fused_groups(["model.layers.1.self_attn.q_proj.bias", "model.layers.1.self_attn.v_proj.bias"])


def _make_llm(path, multiprocessing, **extra):
    pytest.importorskip("vllm")
    from vllm import LLM

    old = os.environ.get("VLLM_ENABLE_V1_MULTIPROCESSING")
    os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = "1" if multiprocessing else "0"
    try:
        return LLM(model=path, **LLM_KWARGS, **extra)
    finally:
        if old is None:
            del os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"]
        else:
            os.environ["VLLM_ENABLE_V1_MULTIPROCESSING"] = old


def _shutdown(llm):
    # Tears down the in-process torch.distributed group too, so later tests can create their own.
    llm.llm_engine.engine_core.shutdown()
    del llm
    gc.collect()


def _max_logprob_gap(llm, hf_model) -> float:
    from vllm import SamplingParams

    params = SamplingParams(temperature=1.0, max_tokens=24, logprobs=0, seed=1)
    worst = 0.0
    for out in llm.generate(PROMPTS, params, use_tqdm=False):
        sample = out.outputs[0]
        prompt_ids, new_ids = list(out.prompt_token_ids), list(sample.token_ids)
        with torch.no_grad():
            logits = hf_model(torch.tensor([prompt_ids + new_ids])).logits[0].float()
        ref = torch.log_softmax(logits, -1)[len(prompt_ids) - 1 : -1]
        ref = ref.gather(-1, torch.tensor(new_ids)[:, None])[:, 0]
        got = torch.tensor([lp[t].logprob for lp, t in zip(sample.logprobs, new_ids)])
        worst = max(worst, (ref - got).abs().max().item())
    return worst


def _perturb(hf_model, seed):
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in hf_model.parameters():
            p.add_(torch.randn(p.shape, generator=g) * 0.05)
        hf_model.lm_head.weight.mul_(20)  # sharpen: near-uniform outputs would hide mismatches


def _check_reload(llm, path):
    from transformers import AutoModelForCausalLM

    hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
    assert _max_logprob_gap(llm, hf_model) < 1e-4
    _perturb(hf_model, seed=0)
    load_weights_into_vllm(llm, list(hf_model.state_dict().items()))
    assert _max_logprob_gap(llm, hf_model) < 1e-4
    # A partial update of unfused weights leaves the rest intact.
    with torch.no_grad():
        hf_model.model.norm.weight.mul_(1.5)
    load_weights_into_vllm(llm, [("model.norm.weight", hf_model.model.norm.weight)])
    assert _max_logprob_gap(llm, hf_model) < 1e-4


def test_inprocess_reload_matches_transformers(tmp_path):
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(str(tmp_path))
    llm = _make_llm(path, multiprocessing=False, worker_extension_cls=WORKER_EXTENSION)
    try:
        _check_reload(llm, path)
        # The probe used to verify syncs: prompt log-probs equal the trainer's forward.
        fresh = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        _perturb(fresh, seed=1)
        load_weights_into_vllm(llm, list(fresh.named_parameters()))
        ids = list(range(3, 200))
        with torch.no_grad():
            ref = torch.log_softmax(fresh(torch.tensor([ids])).logits[0], -1)[:-1]
        ref = ref.gather(-1, torch.tensor(ids[1:])[:, None])[:, 0]
        assert (torch.tensor(vllm_prompt_logprobs(llm, ids)) - ref).abs().max() < 1e-4
        # CPU packs linear weights into kernels: reading them back must fail loudly.
        with pytest.raises(RuntimeError, match="packed"):
            vllm_named_parameters(llm)
    finally:
        _shutdown(llm)


def test_engine_without_the_extension_is_refused(tmp_path):
    path = build_tiny_model(str(tmp_path))
    llm = _make_llm(path, multiprocessing=False)
    try:
        with pytest.raises(RuntimeError, match="worker_extension_cls="):
            load_weights_into_vllm(llm, [("model.norm.weight", torch.ones(1))])
    finally:
        _shutdown(llm)


@pytest.mark.slow
def test_multiprocess_reload_needs_extension(tmp_path):
    path = build_tiny_model(str(tmp_path))
    llm = _make_llm(path, multiprocessing=True, worker_extension_cls=WORKER_EXTENSION)
    try:
        _check_reload(llm, path)
    finally:
        _shutdown(llm)


def _broadcast_sync(llm, named, version, verify, tamper=None):
    """The test process plays the learner's rank 0: joins a weight group with the engine's workers,
    then sends ``named`` as one bucket (``tamper`` alters the buffer after the manifest is made)."""
    from concurrent.futures import ThreadPoolExecutor

    from rlhf_ray.cluster.rendezvous import bind
    from rlhf_ray.sync.buckets import flatten
    from rlhf_ray.sync.group import WeightGroup
    from rlhf_ray.sync.manifest import BucketManifest
    from rlhf_ray.sync.vllm_weights import join_weight_group, receive_into_vllm

    held = bind("127.0.0.1")
    port = held.getsockname()[1]
    with ThreadPoolExecutor(1) as pool:
        source = pool.submit(WeightGroup, "127.0.0.1", port, 0, 2, 60, "127.0.0.1", held)
        assert join_weight_group(llm, "127.0.0.1", port, 1, 2, 60, "127.0.0.1") == [1]
        group = source.result()
        manifest = BucketManifest.build(version, 0, True, named)
        buffer = flatten(named, manifest)
        if tamper:
            tamper(buffer)
        sent = pool.submit(group.broadcast, buffer)
        try:
            receive_into_vllm(llm, manifest, verify, "engine-under-test")
        finally:
            sent.result()
            group.close()


@pytest.mark.parametrize("multiprocessing", [False, pytest.param(True, marks=pytest.mark.slow)])
def test_collective_receive_matches_transformers_and_refuses_corrupt_bytes(tmp_path, multiprocessing):
    """sync.transport=collective's engine side: the engine's workers (in this process, or in vLLM's
    engine process) join a gloo group with the sender and take a bucket by broadcast; the served
    log-probs then equal the sender's model's. A bucket whose bytes changed in transit is refused
    under sync.verify, naming the engine and the bucket's tensors."""
    from transformers import AutoModelForCausalLM

    path = build_tiny_model(str(tmp_path))
    llm = _make_llm(path, multiprocessing=multiprocessing, worker_extension_cls=WORKER_EXTENSION)
    try:
        hf_model = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32).eval()
        _perturb(hf_model, seed=3)
        named = [(n, p.detach()) for n, p in hf_model.named_parameters()]
        _broadcast_sync(llm, named, version=1, verify=True)
        assert _max_logprob_gap(llm, hf_model) < 1e-4

        def flip_one_byte(buffer):
            buffer[buffer.numel() // 2] ^= 1

        with pytest.raises(Exception, match=r"engine-under-test: weight sync version 2, bucket 0: CRC32 .* "
                                            r"corrupted in transit; the bucket holds \['model.embed_tokens.weight'"):
            _broadcast_sync(llm, named, version=2, verify=True, tamper=flip_one_byte)
    finally:
        _shutdown(llm)
