"""`rlhf-ray plan`: memory estimates against DeepSpeed's own estimators and hand counts, placement of
every actor on a node and GPU, refusal of what does not fit (plan and submit), the CLI's exit codes."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from rlhf_ray import cli
from rlhf_ray.cluster import jobs
from rlhf_ray.cluster.hardware import gpu_from_names, nodes_from_file
from rlhf_ray.cluster.layout import assign
from rlhf_ray.config.loading import load_config
from rlhf_ray.planning.memory import (GIB, activation_bytes, logit_bytes, model_folder, model_shape, model_states,
                             role_estimates)
from rlhf_ray.planning.plan import DoesNotFit, check_fit, make_plan, plan_nodes, render

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parents[1]
LLAMA7B = str(ROOT / "configs/models/llama-2-7b")
CFG_4X8 = str(ROOT / "configs/cluster/ppo_7b_4x8.yaml")


@pytest.fixture(autouse=True)
def _in_repo(monkeypatch):
    monkeypatch.chdir(ROOT)  # the example configs name their model folders relative to the repository
    monkeypatch.setenv("WANDB_API_KEY", "x")  # the 7B example logs online: no login warning in these tests


def _ds_per_gpu(capsys, fn, *args, **kwargs) -> float:
    """The 'per GPU' GiB of DeepSpeed's printed table, row offload_optimizer=none (and zero_init=1)."""
    fn(*args, **kwargs)
    for line in capsys.readouterr().out.splitlines():
        if line.rstrip().endswith(("offload_param=none, offload_optimizer=none, zero_init=1",
                                   "| offload_optimizer=none")):
            return float(re.findall(r"([\d.]+)GB", line)[1])
    raise AssertionError("DeepSpeed's table has no row without offload")


def test_7b_model_states_match_deepspeeds_estimators(capsys):
    from deepspeed.runtime.zero.stage3 import estimate_zero3_model_states_mem_needs_all_cold
    from deepspeed.runtime.zero.stage_1_and_2 import estimate_zero2_model_states_mem_needs_all_cold

    s = model_shape(LLAMA7B, "causal_lm")
    assert s.params == 6_738_415_616 and s.largest_layer == 32000 * 4096  # Llama-2-7B; the embedding is largest
    for nodes in (1, 2, 4):
        ours = sum(model_states(s.params, s.largest_layer, 3, "bf16", 8 * nodes).values()) / GIB
        ds = _ds_per_gpu(capsys, estimate_zero3_model_states_mem_needs_all_cold, s.params, s.largest_layer,
                         num_gpus_per_node=8, num_nodes=nodes)
        assert ours == pytest.approx(ds, rel=0.10), (nodes, ours, ds)
        ours = sum(model_states(s.params, s.largest_layer, 2, "bf16", 8 * nodes).values()) / GIB
        ds = _ds_per_gpu(capsys, estimate_zero2_model_states_mem_needs_all_cold, s.params,
                         num_gpus_per_node=8, num_nodes=nodes)
        assert ours == pytest.approx(ds, rel=0.10), (nodes, ours, ds)
    assert 7.4 < sum(model_states(s.params, s.largest_layer, 3, "bf16", 16).values()) / GIB < 7.7  # DeepSpeed: 7.55


def test_model_states_by_hand():
    p, big = 1000, 100
    assert model_states(p, big, 0, "fp32", 4) == {"weights": 4000, "gradients": 4000, "optimizer": 8000}
    assert model_states(p, big, 0, "bf16", 4) == {"weights": 2000, "gradients": 6000, "optimizer": 12000}
    assert model_states(p, big, 1, "bf16", 4) == {"weights": 2000, "gradients": 2000 + 1000, "optimizer": 3000}
    assert model_states(p, big, 2, "fp16", 4) == {"weights": 2000, "gradients": 1500, "optimizer": 3000}
    assert model_states(p, big, 3, "bf16", 4) == {"weights": 500 + 200, "gradients": 1000 + 200, "optimizer": 3000}
    assert model_states(p, big, 3, "fp32", 4) == {"weights": 1000 + 400, "gradients": 1000 + 400, "optimizer": 3000}


def test_activations_and_logits_by_hand(tiny_policy):
    s = model_shape(model_folder(tiny_policy), "causal_lm")  # 2 layers, hidden 64, vocab 512
    assert (s.layers, s.hidden, s.vocab) == (2, 64, 512)
    # Korthikanti et al. 2022: 34·s·b·h bytes per layer at 16 bits; s=100 tokens, b=3 rows
    assert activation_bytes(s, 3, 100, 2, False) == 2 * 34 * 100 * 3 * 64
    assert activation_bytes(s, 3, 100, 4, False) == 2 * 2 * 34 * 100 * 3 * 64  # fp32: twice
    assert activation_bytes(s, 3, 100, 2, True) == 2 * 2 * 100 * 3 * 64 + 34 * 100 * 3 * 64  # inputs + one layer
    assert activation_bytes(s, 3, 100, 2, False, training=False) == 34 * 100 * 3 * 64
    # bf16 logits + fp32 copy + backward's softmax and gradient: 2 + 4 + 8 bytes per (token, vocab entry)
    assert logit_bytes(s, 10, 2, 1.0, True) == 10 * 512 * 14
    assert logit_bytes(s, 10, 4, 0.7, False) == 10 * 512 * (4 + 4 + 4)


def test_param_count_from_config_equals_the_real_models(tiny_policy, tiny_reward_model):
    import torch
    from transformers import AutoModelForCausalLM, AutoModelForSequenceClassification

    from rlhf_ray.models.forward import ValueModel

    lm = AutoModelForCausalLM.from_pretrained(tiny_policy, dtype=torch.float32)
    assert model_shape(tiny_policy, "causal_lm").params == sum(p.numel() for p in lm.parameters())
    assert model_shape(tiny_policy, "value").params == sum(p.numel() for p in ValueModel.from_pretrained(tiny_policy).parameters())
    rm = AutoModelForSequenceClassification.from_pretrained(tiny_reward_model, dtype=torch.float32)
    assert model_shape(tiny_reward_model, "classifier").params == sum(p.numel() for p in rm.parameters())


def test_default_config_plan_fits_this_machine():
    cfg = load_config()
    result = make_plan(cfg, *plan_nodes(cfg))
    assert not result.problems
    assert [p.role for p, _ in result.actors] == ["rollout", "learner", "reference", "reward", "critic"]
    assert all(p.node == 0 and not p.gpus for p, _ in result.actors)
    learner = dict((p.role, e) for p, e in result.actors)["learner"]
    assert learner.parts["optimizer"] == 2 * learner.parts["weights"]  # fp32 AdamW: m and v
    text = render(result, "defaults")
    assert "this machine RAM:" in text and "fits:" in text and "learner#0" in text


def test_7b_on_4_nodes_of_8_gpus_places_every_actor_on_a_named_gpu():
    cfg = load_config(CFG_4X8)
    result = check_fit(cfg)
    names = [n.name for n in result.nodes]
    assert names[0] == "head (m5.4xlarge)" and names[1:] == [f"gpu-8x-a100 (p4de.24xlarge) #{i}" for i in range(4)]
    assert all(n.gpu_gib == 80.0 for n in result.nodes[1:])
    placed = {(p.role, p.rank): (p.node, p.gpus) for p, _ in result.actors}
    assert len(placed) == 4 + 8 + 8 + 8 + 8
    assert all(node >= 1 and gpus for node, gpus in placed.values())
    assert all(len(placed[("rollout", r)][1]) == 2 for r in range(4))  # tensor_parallel_size 2
    for r in range(8):  # colocated rank by rank: the same GPU, half each
        assert placed[("reference", r)] == (placed[("reward", r)][0], [(placed[("reward", r)][1][0][0], 0.5)])
    used = {(node, i) for node, gpus in placed.values() for i, _ in gpus}
    assert len(used) == 32  # every GPU of the cluster
    text = render(result, "7b")
    assert "gpu-8x-a100 (p4de.24xlarge) #3 GPU 7:" in text and "OVER" not in text


def test_zero0_7b_learner_is_refused_naming_the_gpus_and_the_gib_over():
    cfg = load_config(CFG_4X8, ["learner.zero_stage=0"])
    with pytest.raises(DoesNotFit) as e:
        check_fit(cfg)
    msg = str(e.value)
    est = role_estimates(cfg)["learner"]
    over = (est.total - 80 * GIB) / GIB
    assert f"needs {est.total / GIB:.1f} GiB of 80.0 GiB ({over:.1f} GiB over)" in msg
    assert re.search(r"p4de.24xlarge\) #\d GPUs 0, 1, 2, 3, 4, 5, 6, 7, each", msg)
    assert "learner.zero_stage=2 or 3" in msg and est.total > 120 * GIB  # 7B × 20 bytes: 125 GiB of model states


def test_roles_sharing_a_gpu_are_summed_and_refused_together():
    cfg = load_config(CFG_4X8, ["reference.micro_batch_samples_per_actor=64"])
    with pytest.raises(DoesNotFit) as e:
        check_fit(cfg)
    est = role_estimates(cfg)
    both = est["reference"].total + est["reward"].total
    assert est["reference"].total < 80 * GIB and both > 80 * GIB
    assert f"needs {both / GIB:.1f} GiB of 80.0 GiB" in str(e.value)
    assert "reference#0" in str(e.value) and "reward#0" in str(e.value) and "placement.colocate" in str(e.value)


def test_vllm_share_without_room_for_one_sequence_is_refused():
    cfg = load_config(CFG_4X8, ["rollout.gpu_memory_utilization=0.08"])  # 6.4 GiB: less than the 6.3 GiB weights + KV
    with pytest.raises(DoesNotFit, match=r"rollout#0 .*less than one sequence of 2048 tokens"):
        check_fit(cfg)


def test_gpu_memory_from_instance_type_accelerator_or_override():
    assert gpu_from_names("p4d.24xlarge") == "A100-40GB" and gpu_from_names("nvidia-h100-80gb") == "H100-80GB"
    assert gpu_from_names("NVIDIA-A100-SXM4-80GB") == "A100-80GB" and gpu_from_names("A100") is None
    gcp = nodes_from_file(str(ROOT / "cluster_configs/gcp-gpu.yaml"))
    assert gcp[-1].gpu_gib == 80.0 and gcp[-1].gpu_model == "A100-80GB"
    kube = nodes_from_file(str(ROOT / "cluster_configs/kuberay-raycluster.yaml"))
    assert kube[-1].gpu_gib is None and kube[-1].ram_gib == 1000.0  # the pod's memory limit
    assert nodes_from_file(str(ROOT / "cluster_configs/kuberay-raycluster.yaml"), 40)[-1].gpu_gib == 40
    one_node = [f"{r}.num_actors={n}" for r, n in (("rollout", 1), ("learner", 2), ("critic", 2), ("reference", 2), ("reward", 2))]
    cfg = load_config(CFG_4X8, one_node)  # 8 GPUs: the KubeRay example's one worker
    result = make_plan(cfg, *plan_nodes(cfg, "cluster_configs/kuberay-raycluster.yaml"))
    assert any("GPU memory of" in w and "--gpu-memory-gib" in w for w in result.warnings) and not result.problems


def test_fractional_gpus_share_a_device_and_strict_spread_uses_distinct_nodes():
    cfg = load_config(overrides=["learner.num_gpus_per_actor=0.5", "reference.num_gpus_per_actor=0.5",
                                 "rollout.num_gpus_per_actor=1", "ray.local_num_cpus=8"])
    placed = {p.role: p.gpus for p in assign(cfg, [{"CPU": 8, "GPU": 2}])}
    assert placed["rollout"] == [(0, 1.0)] and placed["learner"] == placed["reference"] == [(1, 0.5)]
    cfg = load_config(overrides=["rollout.num_actors=2", "placement.strategy=STRICT_SPREAD"])
    nodes = [p.node for p in assign(cfg, [{"CPU": 8, "GPU": 0}] * 2) if p.role == "rollout"]
    assert sorted(nodes) == [0, 1]


def test_cli_exit_codes(capsys):
    assert cli.main(["plan", CFG_4X8]) == 0
    assert "fits:" in capsys.readouterr().out
    assert cli.main(["plan", CFG_4X8, "learner.zero_stage=0"]) == 2
    assert "DOES NOT FIT" in capsys.readouterr().out
    assert cli.main(["plan", CFG_4X8, "--cluster", "cluster_configs/nope.yaml"]) == 2
    assert "nope.yaml" in capsys.readouterr().err
    assert cli.main(["plan", CFG_4X8, "model.path=/no/such/model"]) == 2
    assert "/no/such/model" in capsys.readouterr().err


def test_submit_refuses_what_does_not_fit_before_any_job(monkeypatch, capsys):
    submitted = []
    monkeypatch.setattr(jobs, "submit", lambda *a, **k: submitted.append(a) or "job-1")
    assert cli.main(["submit", CFG_4X8, "learner.zero_stage=0"]) == 2
    assert "does not fit the cluster file cluster_configs/aws-gpu-4x8.yaml" in capsys.readouterr().err
    assert not submitted
    assert cli.main(["submit", "--cluster", "cluster_configs/aws-gpu.yaml", CFG_4X8, "ray.cluster_config=null"]) == 2
    assert "does not fit the cluster" in capsys.readouterr().err and not submitted  # 32 GPUs asked of 16
