"""Pure tensor algorithms for RLHF; importing this package registers all of them."""
from .registry import (
    ADVANTAGE_ESTIMATORS,
    KL_ESTIMATORS,
    POLICY_LOSSES,
    PREFERENCE_LOSSES,
    VALUE_LOSSES,
    Registry,
)
from .masked import (
    entropy_from_logits,
    logprobs_from_logits,
    mask_from_lengths,
    masked_mean,
    masked_sum,
    masked_var,
    masked_whiten,
    select_valid,
)
from .kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_k1,
    kl_k2,
    kl_k3,
    kl_penalized_rewards,
)
from .advantages import dr_grpo, gae, grpo, reinforce_pp, rloo
from .aggregate import AGGREGATIONS, Normalizer, aggregate_loss, mean_over_units
from .offpolicy import is_weight_metrics, truncated_is_weights
from .losses import (
    bradley_terry_loss,
    clipped_value_loss,
    dpo_loss,
    ipo_loss,
    kto_loss,
    kto_reference_point,
    orpo_loss,
    cispo_policy_loss,
    gspo_policy_loss,
    ppo_policy_loss,
    preference_metrics,
    sft_loss,
    simpo_loss,
)

__all__ = [
    "Registry", "KL_ESTIMATORS", "ADVANTAGE_ESTIMATORS", "POLICY_LOSSES", "VALUE_LOSSES",
    "PREFERENCE_LOSSES",
    "masked_sum", "masked_mean", "masked_var", "masked_whiten", "mask_from_lengths", "select_valid",
    "logprobs_from_logits", "entropy_from_logits",
    "kl_k1", "kl_k2", "kl_k3", "kl_penalized_rewards", "FixedKLController", "AdaptiveKLController",
    "gae", "grpo", "dr_grpo", "rloo", "reinforce_pp",
    "AGGREGATIONS", "Normalizer", "aggregate_loss", "mean_over_units",
    "ppo_policy_loss", "gspo_policy_loss", "cispo_policy_loss", "clipped_value_loss", "sft_loss", "bradley_terry_loss",
    "preference_metrics", "dpo_loss", "ipo_loss", "simpo_loss", "orpo_loss",
    "kto_loss", "kto_reference_point", "truncated_is_weights", "is_weight_metrics",
]
