"""Per-algorithm defaults (AlgorithmSpec.defaults): the settings a paper fixes come from its row unless the
run sets them, reach the loss, survive a saved config, and the values that change what the algorithm is
(AlgorithmSpec.locked) are refused while loading the config, before any actor."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.algorithms import ALGORITHMS
from rlhf_ray.algos.objectives import policy_objective
from rlhf_ray.config import Config, ConfigError, PPOConfig
from rlhf_ray.config.loading import load_config, save_config

pytestmark = pytest.mark.unit


def test_gspo_alone_gets_the_papers_clip_range_and_aggregation():
    cfg = load_config(overrides=["algorithm=gspo"])
    assert (cfg.ppo.clip_eps, cfg.ppo.clip_eps_high, cfg.ppo.loss_agg) == (3e-4, 4e-4, "seq-mean-token-mean")
    assert not any(cfg.is_set(k) for k in ("ppo.clip_eps", "ppo.clip_eps_high", "ppo.loss_agg"))  # not the user's
    assert cfg.algorithm_settings() == [("ppo.clip_eps", 3e-4, "gspo's default"),
                                        ("ppo.clip_eps_high", 4e-4, "gspo's default"),
                                        ("ppo.loss_agg", "seq-mean-token-mean", "gspo's default")]


def test_cispo_alone_leaves_the_lower_side_of_its_weight_open():
    cfg = load_config(overrides=["algorithm=cispo"])
    assert (cfg.ppo.clip_eps, cfg.ppo.clip_eps_high, cfg.ppo.loss_agg) == (1.0, 0.28, "token-mean")
    assert cfg.algorithm_settings()[2] == ("ppo.loss_agg", "token-mean", "default")  # no row value: the schema's


def test_algorithms_without_row_values_keep_the_schema_defaults():
    cfg = load_config(overrides=["algorithm=ppo"])
    assert (cfg.ppo.clip_eps, cfg.ppo.clip_eps_high, cfg.ppo.loss_agg) == (0.2, None, "token-mean")
    assert load_config(overrides=["algorithm=dpo", "offline.train_file=x.jsonl"]).ppo.clip_eps == 0.2


def _one_sequence(log_ratio: float, n_tokens: int):
    """One sequence of n_tokens, each token's log π/π_old = log_ratio, advantage 1: (logp leaf, micro-batch)."""
    old = torch.full((1, n_tokens), -1.0)
    logp = (old + log_ratio).requires_grad_()
    mb = {"old_logprobs": old, "advantages": torch.ones(1, n_tokens), "response_mask": torch.ones(1, n_tokens)}
    return logp, mb


def _loss_and_grad(cfg: Config, log_ratio: float, n_tokens: int = 4):
    """policy_objective as PolicyLearner.train_policy calls it: the config's ppo section, the row's loss."""
    logp, mb = _one_sequence(log_ratio, n_tokens)
    loss, metrics = policy_objective(cfg.ppo, cfg.spec.objective, cfg.ppo.loss_agg, logp, torch.zeros_like(logp), mb,
                                     kl_coef=0.0)
    loss.backward()
    return metrics, logp.grad


def test_the_gspo_clip_range_reaching_the_loss_is_the_rows():
    # sequence ratio e^0.01 ≈ 1.01, A > 0: past 1 + 4e-4 the sequence is clipped (no gradient); within 1.2 it is not
    metrics, grad = _loss_and_grad(load_config(overrides=["algorithm=gspo"]), 0.01)
    assert metrics["clipfrac"] == 1.0 and torch.equal(grad, torch.zeros_like(grad))
    metrics, grad = _loss_and_grad(load_config(overrides=["algorithm=gspo", "ppo.clip_eps_high=0.2"]), 0.01)
    assert metrics["clipfrac"] == 0.0
    # seq-mean-token-mean of the GSPO-token form: ∂L/∂logp_t = −s·A/|y| on every token
    assert torch.allclose(grad, torch.full((1, 4), -torch.tensor(0.01).exp().item() / 4))


def test_the_cispo_weight_reaching_the_loss_has_no_lower_bound():
    # ratio 0.5 on every token, A = 1: the weight stays 0.5 (PPO's range would lift it to 0.8); token-mean over 4
    metrics, grad = _loss_and_grad(load_config(overrides=["algorithm=cispo"]), float(torch.tensor(0.5).log()))
    assert metrics["clipfrac"] == 0.0
    assert torch.allclose(grad, torch.full((1, 4), -0.5 / 4))
    metrics, grad = _loss_and_grad(load_config(overrides=["algorithm=cispo", "ppo.clip_eps=0.2"]),
                                   float(torch.tensor(0.5).log()))
    assert metrics["clipfrac"] == 1.0 and torch.allclose(grad, torch.full((1, 4), -0.8 / 4))


def test_an_explicit_value_wins_even_the_schema_default():
    cfg = load_config(overrides=["algorithm=gspo", "ppo.clip_eps=0.2"])  # 0.2 is the schema's default: still the user's
    assert (cfg.ppo.clip_eps, cfg.ppo.clip_eps_high) == (0.2, 4e-4)  # each key on its own: the other stays the row's
    assert cfg.algorithm_settings()[:2] == [("ppo.clip_eps", 0.2, "given"), ("ppo.clip_eps_high", 4e-4, "gspo's default")]
    cfg = load_config(overrides=["algorithm=cispo", "ppo.clip_eps_high=0.5", "ppo.loss_agg=seq-mean-token-mean"])
    assert (cfg.ppo.clip_eps, cfg.ppo.clip_eps_high, cfg.ppo.loss_agg) == (1.0, 0.5, "seq-mean-token-mean")
    assert cfg.is_set("ppo.clip_eps_high") and not cfg.is_set("ppo.clip_eps")


def test_loss_agg_auto_counts_as_unset():
    for name, expected in (("grpo", "seq-mean-token-mean"), ("dr_grpo", "seq-mean-token-sum-norm"), ("ppo", "token-mean")):
        cfg = load_config(overrides=[f"algorithm={name}", "ppo.loss_agg=auto"])
        assert cfg.ppo.loss_agg == expected and not cfg.is_set("ppo.loss_agg"), name


@pytest.mark.parametrize("agg", ["token-mean", "seq-mean-token-sum-norm"])
def test_gspo_with_another_aggregation_is_refused_naming_both_keys(agg, tmp_path):
    with pytest.raises(ConfigError, match=rf"algorithm=gspo with ppo\.loss_agg={agg}: .*no longer GSPO\. "
                                          rf"Unset ppo\.loss_agg \(algorithm=gspo uses seq-mean-token-mean\)"):
        load_config(overrides=["algorithm=gspo", f"ppo.loss_agg={agg}"])
    path = tmp_path / "c.yaml"  # from a file as from overrides
    path.write_text(f"algorithm: gspo\nppo:\n  loss_agg: {agg}\n")
    with pytest.raises(ConfigError, match=rf"algorithm=gspo with ppo\.loss_agg={agg}"):
        load_config(path)
    assert load_config(overrides=["algorithm=gspo", "ppo.loss_agg=seq-mean-token-mean"]).ppo.loss_agg == "seq-mean-token-mean"


@pytest.mark.parametrize("overrides", [["algorithm=gspo"], ["algorithm=cispo"], ["algorithm=gspo", "ppo.clip_eps=0.01"],
                                       ["algorithm=grpo", "ppo.loss_agg=auto"]])
def test_a_saved_config_loads_back_to_the_same_values(tmp_path, overrides):
    """A run's config.yaml lists every key, the row's values among them: a resumed gspo run must load it as it
    was (its seq-mean-token-mean is no conflict) and train with the same values."""
    cfg = load_config(overrides=overrides)
    save_config(cfg, tmp_path / "config.yaml")
    again = load_config(tmp_path / "config.yaml")
    assert again == cfg and again.model_dump() == cfg.model_dump()
    assert [value for _, value, _ in again.algorithm_settings()] == [value for _, value, _ in cfg.algorithm_settings()]


def test_changing_the_algorithm_resolves_its_defaults_again():
    cfg = load_config(overrides=["algorithm=gspo", "ppo.clip_eps_high=0.01"])
    cfg.algorithm = "cispo"  # validate_assignment runs the config's checks again
    assert (cfg.ppo.clip_eps, cfg.ppo.clip_eps_high) == (1.0, 0.01)
    cfg.algorithm = "ppo"
    assert (cfg.ppo.clip_eps, cfg.ppo.clip_eps_high, cfg.ppo.loss_agg) == (0.2, 0.01, "token-mean")


def test_a_section_passed_in_is_not_changed():
    section = PPOConfig()
    cfg = Config(algorithm="gspo", ppo=section)
    assert cfg.ppo.clip_eps == 3e-4 and section.clip_eps == 0.2


@pytest.mark.parametrize("name", [n for n, s in ALGORITHMS.items() if s.defaults])
def test_every_row_default_is_a_valid_config_value(name):
    """Setting a row's values by hand gives the same config as leaving them to the row (a key the schema does
    not have, or a value its field refuses, fails here)."""
    spec = ALGORITHMS[name]
    assert set(dict(spec.locked)) <= set(dict(spec.defaults))
    by_hand = load_config(overrides=[f"algorithm={name}"] + [f"{k}={v}" for k, v in spec.defaults])
    assert by_hand.model_dump() == load_config(overrides=[f"algorithm={name}"]).model_dump()
