"""The HF parameters that vLLM fuses into one: q/k/v into qkv_proj, gate/up into gate_up_proj.

vLLM rebuilds a fused layer from one load call's tensors, so every member must arrive together: the
weight sync cuts its buckets at layer ends (rlhf_ray.sync.vllm_weights), and a LoRA merge that
touches one member sends its siblings too (rlhf_ray.models.lora).
"""

import re

# (pattern of a member's HF name, the members' prefixes): group 1 of a match is the layer's prefix.
FUSED_GROUPS = (
    (re.compile(r"^(.*\.self_attn\.)(q|k|v)_proj\.(weight|bias)$"), ("q", "k", "v")),
    (re.compile(r"^(.*\.mlp\.)(gate|up)_proj\.(weight|bias)$"), ("gate", "up")),
)
