"""What each node offers in memory: GPU memory per device and host RAM, next to the Ray resources.

A cluster file states CPUs and GPUs, not their memory: it is read off the instance type, the GPU
accelerator or the KubeRay node selector through the tables below (NVIDIA's totals as nvidia-smi shows
them, the clouds' instance pages for RAM), or given with ``--gpu-memory-gib``. When none says, the
node's GPU memory is unknown and the plan says so instead of guessing.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

from rlhf_ray.cluster.layout import cluster_file_groups
from rlhf_ray.config import Config

# GPU model → GiB per device (nvidia-smi totals: A100 80GB 81920 MiB, H100 SXM 81559 MiB, A10G 23028 MiB, ...)
GPU_GIB = {"A100-40GB": 40.0, "A100-80GB": 80.0, "H100-80GB": 79.6, "H200-141GB": 140.4, "A10G": 22.5,
           "L4": 22.5, "L40S": 44.4, "T4": 15.0, "V100-16GB": 15.8, "V100-32GB": 31.7}
# Instance type → (GPU model, host RAM GiB). AWS lists GiB, GCP lists GB (converted here).
INSTANCES = {
    "p4d.24xlarge": ("A100-40GB", 1152), "p4de.24xlarge": ("A100-80GB", 1152),
    "p5.48xlarge": ("H100-80GB", 2048), "p5e.48xlarge": ("H200-141GB", 2048), "p5en.48xlarge": ("H200-141GB", 2048),
    "p3.2xlarge": ("V100-16GB", 61), "p3.8xlarge": ("V100-16GB", 244), "p3.16xlarge": ("V100-16GB", 488),
    "p3dn.24xlarge": ("V100-32GB", 768),
    "g5.xlarge": ("A10G", 16), "g5.2xlarge": ("A10G", 32), "g5.4xlarge": ("A10G", 64), "g5.8xlarge": ("A10G", 128),
    "g5.12xlarge": ("A10G", 192), "g5.16xlarge": ("A10G", 256), "g5.24xlarge": ("A10G", 384), "g5.48xlarge": ("A10G", 768),
    "g6.12xlarge": ("L4", 192), "g6.48xlarge": ("L4", 768),
    "a2-highgpu-1g": ("A100-40GB", 79), "a2-highgpu-2g": ("A100-40GB", 158), "a2-highgpu-4g": ("A100-40GB", 317),
    "a2-highgpu-8g": ("A100-40GB", 633), "a2-megagpu-16g": ("A100-40GB", 1267),
    "a2-ultragpu-1g": ("A100-80GB", 158), "a2-ultragpu-2g": ("A100-80GB", 317), "a2-ultragpu-4g": ("A100-80GB", 633),
    "a2-ultragpu-8g": ("A100-80GB", 1267), "a3-highgpu-8g": ("H100-80GB", 1743), "a3-megagpu-8g": ("H100-80GB", 1743),
}
# Accelerator names: GCP acceleratorType / GKE's cloud.google.com/gke-accelerator label, and Ray's
# accelerator_type:<name> resource (ray.util.accelerators). A bare "A100" leaves 40 or 80 GB open.
ACCELERATORS = {
    "nvidia-tesla-a100": "A100-40GB", "nvidia-a100-80gb": "A100-80GB", "nvidia-h100-80gb": "H100-80GB",
    "nvidia-h100-mega-80gb": "H100-80GB", "nvidia-h200-141gb": "H200-141GB", "nvidia-l4": "L4",
    "nvidia-tesla-t4": "T4", "nvidia-tesla-v100": "V100-16GB",
    "A100-40G": "A100-40GB", "A100-80G": "A100-80GB", "H100": "H100-80GB", "H200": "H200-141GB", "A10G": "A10G",
    "L4": "L4", "L40S": "L40S", "T4": "T4", "V100": "V100-16GB",
}
GPU_LABELS = ("cloud.google.com/gke-accelerator", "nvidia.com/gpu.product", "node.kubernetes.io/instance-type",
              "beta.kubernetes.io/instance-type", "karpenter.k8s.aws/instance-gpu-memory")


@dataclass
class NodeSpec:
    name: str
    resources: dict[str, float]  # Ray's view: CPU, GPU, custom resources
    gpu_gib: float | None = None  # memory of each GPU; None = unknown
    ram_gib: float | None = None  # host RAM; None = unknown
    gpu_model: str | None = None
    source: str = ""  # how gpu_gib was found, or why it is unknown


def gpu_from_names(*names: str) -> str | None:
    """The GPU model of the first name the tables know (instance type or accelerator), or of an
    'NVIDIA-A100-SXM4-80GB'-style product name; None when none does."""
    for n in names:
        if not n:
            continue
        if n in INSTANCES:
            return INSTANCES[n][0]
        if n in ACCELERATORS:
            return ACCELERATORS[n]
        m = re.search(r"(A100|H100|H200|V100).*?(\d+)\s*GB", n, re.I)
        if m and f"{m[1].upper()}-{m[2]}GB" in GPU_GIB:
            return f"{m[1].upper()}-{m[2]}GB"
    return None


def nodes_from_file(path: str, gpu_gib: float | None = None) -> list[NodeSpec]:
    """Every node a cluster file can bring up (as layout.nodes_from_cluster_file, in the same order),
    with the memory its instance type, accelerator or node selector tells; ``gpu_gib`` overrides."""
    out = []
    for name, count, res, section in cluster_file_groups(path):
        node_config = section.get("node_config", {}) or {}
        pod = (section.get("template", {}) or {}).get("spec", {}) or {}
        selector = {**(pod.get("nodeSelector") or {}), **(node_config.get("labels") or {})}
        accels = [a.get("acceleratorType", "") for a in node_config.get("guestAccelerators", []) or []]
        instance = node_config.get("InstanceType") or node_config.get("machineType") or selector.get(
            "node.kubernetes.io/instance-type") or selector.get("beta.kubernetes.io/instance-type") or ""
        model = gpu_from_names(instance, *accels, *(str(selector.get(k, "")) for k in GPU_LABELS[:2]))
        ram = INSTANCES[instance][1] if instance in INSTANCES else _pod_memory_gib(pod)
        mib = selector.get("karpenter.k8s.aws/instance-gpu-memory")
        per_gpu = GPU_GIB.get(model) if model else (float(mib) / 1024 if mib else None)
        why = (f"{instance or ', '.join(accels) or 'node selector'} → {model}" if model else
               "karpenter instance-gpu-memory label" if mib else
               "no instance type, accelerator or GPU node-selector label the table knows")
        if gpu_gib is not None:
            per_gpu, why = gpu_gib, "--gpu-memory-gib"
        label = f"{name}" + (f" ({instance})" if instance else "")
        out += [NodeSpec(f"{label} #{i}" if count > 1 else label, dict(res), per_gpu if res["GPU"] else None,
                         ram, model if res["GPU"] else None, why) for i in range(count)]
    return out


def _pod_memory_gib(pod: dict) -> float | None:
    """A KubeRay pod's memory limit ('1000Gi', '32G', '512Mi') in GiB."""
    containers = pod.get("containers") or [{}]
    limit = str(((containers[0].get("resources") or {}).get("limits") or {}).get("memory", ""))
    m = re.fullmatch(r"([\d.]+)\s*(Ki|Mi|Gi|Ti|K|M|G|T)?", limit)
    if not m:
        return None
    scale = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "K": 1e3, "M": 1e6, "G": 1e9, "T": 1e12, None: 1}[m[2]]
    return float(m[1]) * scale / 2**30


def local_gpus(cfg: Config) -> int:
    """GPUs a local Ray gets: ray.local_num_gpus, else the machine's CUDA devices."""
    if cfg.ray.local_num_gpus is not None:
        return cfg.ray.local_num_gpus
    import torch  # heavy: only when a local Ray is planned

    return torch.cuda.device_count()


def local_node(num_cpus: float, num_gpus: float, gpu_gib: float | None = None) -> NodeSpec:
    """This machine as a local Ray would see it: ``num_cpus``/``num_gpus`` as the preflight counts them,
    the RAM from the OS, each GPU's memory from torch when there are real ones (``gpu_gib`` overrides)."""
    ram = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    name, why = None, "--gpu-memory-gib" if gpu_gib is not None else "no GPU"
    if num_gpus and gpu_gib is None:
        import torch  # heavy: only when GPUs are asked for

        if torch.cuda.is_available():
            props = torch.cuda.get_device_properties(0)
            name, gpu_gib, why = props.name, props.total_memory / 2**30, "torch.cuda"
        else:
            why = "logical GPUs (ray.local_num_gpus) without real ones: their memory is unknown"
    return NodeSpec("this machine", {"CPU": float(num_cpus), "GPU": float(num_gpus)}, gpu_gib, ram, name, why)


def running_cluster_nodes(gpu_gib: float | None = None) -> list[NodeSpec]:
    """The alive nodes of the connected Ray cluster: resources as rlhf_ray.cluster.placement.cluster_nodes, the
    memory Ray accounts for tasks (its ``memory`` resource) as RAM, the GPU from accelerator_type."""
    import ray  # heavy: only for a running cluster

    out = []
    for n in (n for n in ray.nodes() if n["Alive"]):
        res = n["Resources"]
        model = gpu_from_names(*(k.split(":", 1)[1] for k in res if k.startswith("accelerator_type:")))
        keep = {k: v for k, v in res.items() if not k.startswith("node:") and k not in ("memory", "object_store_memory")}
        per_gpu = gpu_gib if gpu_gib is not None else GPU_GIB.get(model) if model else None
        out.append(NodeSpec(n.get("NodeManagerAddress", "?"), {"CPU": 0.0, "GPU": 0.0, **keep},
                            per_gpu if keep.get("GPU") else None, res.get("memory", 0) / 2**30 or None, model,
                            "--gpu-memory-gib" if gpu_gib is not None else
                            f"accelerator_type → {model}" if model else "Ray reports no accelerator_type the table knows"))
    return out
