"""Forward passes over the ``[prompt | response]`` batch layout (see rlhf_ray.data.batch).

Token t of the response is predicted from position P-1+t, so the response's logits are the R
positions just before the end of the sequence; with ``logits_to_keep`` the LM head only runs there,
which saves a fifth of the FLOPs of a 135M model with a 49k vocabulary.
"""

from __future__ import annotations

from pathlib import Path

import torch
from safetensors import safe_open
from torch import nn

from rlhf_ray.algos.masked import entropy_from_logits, logprobs_from_logits, masked_sum
from rlhf_ray.data.batch import Batch
from rlhf_ray.models.loading import check_model_folder
from rlhf_ray.models.packing import hf_model, pack as pack_rows, packed_response_logits, unpack


def _model_inputs(batch: Batch, device) -> dict:
    return {k: batch[k].to(device) for k in ("input_ids", "attention_mask", "position_ids")}


def response_logprobs(model: nn.Module, batch: Batch, temperature: float = 1.0, with_entropy: bool = False,
                      pack: bool = False) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Log-probs [B, R] of the response tokens (and per-token entropy when asked). With ``pack`` the
    rows' real tokens share rows (rlhf_ray.models.packing); the results are the same, in [B, R]."""
    device = next(model.parameters()).device
    if pack:
        layout = pack_rows(batch)
        logits = packed_response_logits(model, layout, device).float()
        targets = layout.targets.to(device)
    else:
        r = batch["response_ids"].shape[1]
        logits = model(**_model_inputs(batch, device), use_cache=False, logits_to_keep=r + 1).logits[:, :-1].float()
        targets = batch["response_ids"].to(device)
    if temperature != 1.0:
        logits = logits / temperature
    logp = logprobs_from_logits(logits, targets)
    entropy = entropy_from_logits(logits) if with_entropy else None
    if pack:
        shape = tuple(batch["response_ids"].shape)
        logp = unpack(logp, layout, shape)
        entropy = unpack(entropy, layout, shape) if entropy is not None else None
    return logp, entropy


def last_token_index(batch: Batch) -> torch.Tensor:
    p = batch["input_ids"].shape[1] - batch["response_ids"].shape[1]
    return p + batch["response_lengths"] - 1


class ValueModel(nn.Module):
    """A transformer backbone with a scalar head on every position: the PPO critic.

    Built from a causal LM folder (the policy: head starts near zero) or from a reward-model
    folder (the head starts as its score layer, the usual OpenRLHF/InstructGPT choice).
    """

    def __init__(self, backbone: nn.Module, head: nn.Linear):
        super().__init__()
        self.backbone = backbone
        self.value_head = head

    @classmethod
    def from_pretrained(cls, path: str, dtype=torch.float32) -> "ValueModel":
        from transformers import AutoConfig, AutoModel

        check_model_folder(path)
        backbone = AutoModel.from_pretrained(path, dtype=dtype)
        hidden = AutoConfig.from_pretrained(path).hidden_size
        head = nn.Linear(hidden, 1, bias=False, dtype=dtype)
        score = _score_weight(path)
        if score is not None:
            head.weight.data.copy_(score.to(dtype))
        else:
            nn.init.normal_(head.weight, std=1.0 / (hidden + 1) ** 0.5 * 1e-2)
        return cls(backbone, head)

    def forward(self, input_ids, attention_mask, position_ids, **_):
        hidden = self.backbone(input_ids=input_ids, attention_mask=attention_mask,
                               position_ids=position_ids, use_cache=False).last_hidden_state
        return self.value_head(hidden).squeeze(-1)

    def gradient_checkpointing_enable(self, **kwargs):
        self.backbone.gradient_checkpointing_enable(**kwargs)

    def get_input_embeddings(self) -> nn.Module:
        return self.backbone.get_input_embeddings()


def _score_weight(path: str) -> torch.Tensor | None:
    """The `score.weight` of a sequence-classification checkpoint, if the folder is one."""
    for f in sorted(Path(path).glob("*.safetensors")):
        with safe_open(str(f), "pt") as st:
            if "score.weight" in st.keys():
                w = st.get_tensor("score.weight")
                return w if w.shape[0] == 1 else None
    return None


def response_values(model: ValueModel, batch: Batch, pack: bool = False) -> torch.Tensor:
    """V(s_t) [B, R]: the value of the state before each response token (packed rows with ``pack``)."""
    device = next(model.parameters()).device
    if pack:
        layout = pack_rows(batch)
        values = model(**layout.model_inputs(device))
        picked = values[layout.src_bin.to(device), layout.src_col.to(device)].float()
        return unpack(picked, layout, tuple(batch["response_ids"].shape))
    r = batch["response_ids"].shape[1]
    return model(**_model_inputs(batch, device))[:, -r - 1:-1].float()


def sequence_scores(model: nn.Module, batch: Batch, pack: bool = False) -> torch.Tensor:
    """Reward-model scores [B] read at each row's last real token (packed rows with ``pack``).

    HF's sequence-classification heads pool at the last non-pad token, which is wrong when the pad
    token equals the end token; so the backbone and the score layer are run here and pooled by length.
    """
    device = next(model.parameters()).device
    model = hf_model(model)
    backbone = getattr(model, model.base_model_prefix)
    if pack:
        layout = pack_rows(batch)
        hidden = backbone(**layout.model_inputs(device), use_cache=False).last_hidden_state
        last = hidden[layout.last_bin.to(device), layout.last_col.to(device)]
    else:
        hidden = backbone(**_model_inputs(batch, device), use_cache=False).last_hidden_state
        rows = torch.arange(hidden.shape[0], device=device)
        last = hidden[rows, last_token_index(batch).to(device)]
    return model.score(last).squeeze(-1).float()


def sequence_logprobs(model: nn.Module, batch: Batch, pack: bool = False) -> torch.Tensor:
    """[B, 2]: each row's summed response log-prob (temperature 1) and its response token count.

    What offline preference losses consume; the counts travel along for length-normalised losses."""
    logp, _ = response_logprobs(model, batch, pack=pack)
    mask = batch["response_mask"].to(logp.device)
    return torch.stack([masked_sum(logp, mask, dim=-1), batch["response_lengths"].to(logp)], dim=-1)
