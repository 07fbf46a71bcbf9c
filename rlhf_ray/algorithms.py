"""The algorithm table: one row per algorithm, and the only place that says what an algorithm is.

Everything that varies by algorithm is read from its row: the config's choice list and checks
(rlhf_ray.config), which roles start (rlhf_ray.cluster.layout), which controller drives them
(rlhf_ray.trainers), which learner call trains and with which registered functions (the roles and
rlhf_ray.algos). Adding an algorithm is one row here plus the functions it names, registered in
rlhf_ray.algos; see docs/architecture.md, "Adding an algorithm".

This module is data only, at the bottom of the package: it imports nothing of rlhf_ray, so the
config can read it and every layer above can too.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

Controller = Literal["online", "offline", "reward_model", "raft", "iterative"]
# The trained role's call for one update, named by what it trains on (the method is train_<update>):
#   policy      PolicyLearner.train_policy: clipped-surrogate epochs on a step's rollouts
#   preference  PolicyLearner.train_preference: one step on (chosen, rejected) pairs
#   unpaired    PolicyLearner.train_unpaired: one KTO step on labelled single completions
#   sft         PolicyLearner.train_sft: next-token loss on responses
#   reward      RewardTrainer.train_reward: one Bradley-Terry step on pairs
Update = Literal["policy", "preference", "unpaired", "sft", "reward"]
LossAgg = Literal["token-mean", "seq-mean-token-mean", "seq-mean-token-sum-norm"]

ONLINE_ROLES = ("rollout", "learner", "reference", "reward")


@dataclass(frozen=True)
class AlgorithmSpec:
    name: str
    controller: Controller
    roles: tuple[str, ...]           # the roles it starts actors for
    update: Update                   # the trained role's call (see Update above)
    objective: str                   # registered loss: POLICY_LOSSES (online), PREFERENCE_LOSSES, or the update's own
    estimator: str | None = None     # ADVANTAGE_ESTIMATORS name (online only)
    group: bool = False              # compares the n samples of one prompt (needs ppo.samples_per_prompt ≥ 2)
    example: str = ""                # configs/ file that runs it
    summary: str = ""
    # The settings its paper fixes, as (dotted config key, value): the config uses them wherever the run's
    # file and overrides leave the key unset (rlhf_ray.config.schema); keys no row names keep the schema's default.
    defaults: tuple[tuple[str, object], ...] = ()
    # Keys of `defaults` whose other values change what the algorithm is, with why: the config refuses them.
    locked: tuple[tuple[str, str], ...] = ()

    @property
    def needs_reference(self) -> bool:
        return "reference" in self.roles

    @property
    def trained_role(self) -> str:
        return "reward" if self.update == "reward" else "learner"

    @property
    def trained_roles(self) -> tuple[str, ...]:
        """DeepSpeed-trained roles: their batch sizes must split over their actors."""
        return tuple(r for r in ("learner", "critic") if r in self.roles) if self.update != "reward" else ("reward",)

    @property
    def has_rollout(self) -> bool:
        return "rollout" in self.roles


def _online(name, estimator, objective="ppo", group=True, critic=False, summary="", defaults=None, locked=None):
    roles = ONLINE_ROLES + (("critic",) if critic else ())
    return AlgorithmSpec(name, "online", roles, "policy", objective, estimator, group, f"configs/{name}_arithmetic.yaml",
                         summary, tuple((defaults or {}).items()), tuple((locked or {}).items()))


def _offline(name, update, objective, reference=True, summary=""):
    roles = ("learner", "reference") if reference else ("learner",)
    return AlgorithmSpec(name, "offline", roles, update, objective, example=f"configs/{name}_hh.yaml", summary=summary)


ALGORITHMS: dict[str, AlgorithmSpec] = {a.name: a for a in (
    _online("ppo", "gae", group=False, critic=True, summary="PPO with a learned critic and GAE"),
    _online("grpo", "grpo", summary="GRPO: group z-scored outcome advantages",
            defaults={"ppo.loss_agg": "seq-mean-token-mean"}),
    _online("dr_grpo", "dr_grpo", summary="Dr. GRPO: group-centred advantages, no std or length normalisation",
            defaults={"ppo.loss_agg": "seq-mean-token-sum-norm"}),
    # Zheng et al. 2025: a sequence ratio is a geometric mean of token ratios, so its range is hundreds of times narrower
    _online("gspo", "grpo", objective="gspo",
            summary="GSPO: sequence-level, length-normalised importance ratio clipped per sequence",
            defaults={"ppo.loss_agg": "seq-mean-token-mean", "ppo.clip_eps": 3e-4, "ppo.clip_eps_high": 4e-4},
            locked={"ppo.loss_agg": "GSPO's objective is a mean over sequences of one ratio each; a token-level "
                                    "aggregation weighs each sequence by its length and is no longer GSPO"}),
    # MiniMax-M1: no lower bound on the weight (1 - 1.0 = 0), the upper at 1.28
    _online("cispo", "grpo", objective="cispo", summary="CISPO: clipped stop-gradient IS weight on REINFORCE tokens",
            defaults={"ppo.clip_eps": 1.0, "ppo.clip_eps_high": 0.28}),
    _online("rloo", "rloo", summary="RLOO: leave-one-out baseline"),
    _online("reinforce_pp", "reinforce_pp", group=False, summary="REINFORCE++: batch-whitened token returns"),
    _offline("dpo", "preference", "dpo", summary="DPO"),
    _offline("ipo", "preference", "ipo", summary="IPO"),
    _offline("cdpo", "preference", "cdpo", summary="conservative DPO (label smoothing)"),
    _offline("simpo", "preference", "simpo", reference=False, summary="SimPO (reference-free)"),
    _offline("orpo", "preference", "orpo", reference=False, summary="ORPO (reference-free)"),
    _offline("kto", "unpaired", "kto", summary="KTO on labelled single completions"),
    _offline("sft", "sft", "sft", reference=False, summary="supervised fine-tuning"),
    AlgorithmSpec("reward_model", "reward_model", ("reward",), "reward", "bradley_terry",
                  example="configs/reward_model_hh.yaml", summary="Bradley-Terry reward model"),
    AlgorithmSpec("raft", "raft", ("rollout", "learner", "reward"), "sft", "sft",
                  example="configs/raft_arithmetic.yaml", summary="RAFT: SFT on the best of n samples, in rounds"),
    AlgorithmSpec("iterative_dpo", "iterative", ONLINE_ROLES, "preference", "dpo", example="configs/iterative_dpo_hh.yaml",
                  summary="iterative DPO: rounds of DPO on the policy's own best-vs-worst samples"),
)}


def algorithm(name: str) -> AlgorithmSpec:
    try:
        return ALGORITHMS[name]
    except KeyError:
        raise KeyError(f"unknown algorithm {name!r}; choose one of: {', '.join(ALGORITHMS)}") from None
