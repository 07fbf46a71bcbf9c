"""Multi-turn masks: the response mask marks the policy's own tokens and has holes where observation
tokens (tool output) sit between turns. Every estimator, the KL-penalised rewards and every policy
objective must treat a row with holes as the row of its policy tokens alone (compacted into a dense
prefix), and behave exactly as before on prefix masks."""

from __future__ import annotations

import pytest
import torch

from rlhf_ray.algos import (
    ADVANTAGE_ESTIMATORS,
    AGGREGATIONS,
    POLICY_LOSSES,
    VALUE_LOSSES,
    entropy_from_logits,
    kl_penalized_rewards,
    logprobs_from_logits,
    mask_from_lengths,
    masked_whiten,
)
from rlhf_ray.algos.objectives import policy_objective, value_objective
from rlhf_ray.config.loading import load_config
from rlhf_ray.data.batch import build_batch, trim_padding

pytestmark = pytest.mark.unit

T = 12
# Rows as (length, policy mask over the length): holes mid-row, a mask ending before the length
# (the row ends with an observation), a leading hole, an all-zero row, a plain prefix row, an empty row.
FIXED_ROWS = [
    (12, [1, 1, 1, 0, 0, 0, 1, 1, 0, 0, 1, 1]),
    (10, [1, 1, 0, 0, 1, 1, 1, 0, 0, 0]),
    (9, [0, 0, 0, 1, 1, 0, 1, 1, 1]),
    (7, [0] * 7),
    (5, [1] * 5),
    (0, []),
    (12, [0, 1, 0, 1, 0, 1, 0, 1, 0, 1, 0, 0]),
    (1, [1]),
]


def _random_rows(n, seed):
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(n):
        length = int(torch.randint(0, T + 1, (1,), generator=g))
        rows.append((length, (torch.rand(length, generator=g) < 0.6).long().tolist()))
    return rows


def _mask(rows):
    """Length mask AND policy mask, as build_batch makes it."""
    m = torch.zeros(len(rows), T)
    for i, (length, pm) in enumerate(rows):
        m[i, :length] = torch.tensor(pm, dtype=torch.float32)
    return m


ROWS = FIXED_ROWS + _random_rows(24, seed=0)  # 32 rows: group sizes 2, 4 and 8 divide it


def _compact(x, mask):
    """Each row's valid entries moved to the front of a row of the same width, and that prefix mask."""
    out = torch.zeros_like(x)
    n = (mask != 0).sum(-1)
    for i in range(x.shape[0]):
        idx = (mask[i] != 0).nonzero().squeeze(-1)
        out[i, :len(idx)] = x[i, idx]
    return out, mask_from_lengths(n, x.shape[1]).to(mask.dtype)


def _scatter(dense, mask):
    """Inverse of _compact: row i's first k entries back to its k valid positions, 0 elsewhere."""
    out = torch.zeros_like(dense)
    for i in range(dense.shape[0]):
        idx = (mask[i] != 0).nonzero().squeeze(-1)
        out[i, idx] = dense[i, :len(idx)]
    return out


def _inputs(seed=1, dtype=torch.float32):
    g = torch.Generator().manual_seed(seed)
    mask = _mask(ROWS)
    rewards = torch.randn(len(ROWS), T, generator=g, dtype=dtype)
    values = torch.randn(len(ROWS), T, generator=g, dtype=dtype)
    return rewards, values, mask


def _old_gae(token_rewards, values, mask, gamma, lam):
    """The prefix-mask GAE loop as it was before multi-turn masks, kept verbatim as a reference."""
    dtype = torch.promote_types(values.dtype, torch.float32)
    m = mask.to(dtype)
    zero = torch.zeros((), dtype=dtype)
    v = torch.where(mask != 0, values.to(dtype), zero)
    r = torch.where(mask != 0, token_rewards.to(dtype), zero)
    T_ = v.shape[1]
    adv = torch.zeros_like(v)
    running = torch.zeros_like(v[:, 0])
    for t in reversed(range(T_)):
        next_v = v[:, t + 1] if t + 1 < T_ else torch.zeros_like(running)
        delta = r[:, t] + gamma * next_v - v[:, t]
        running = (delta + gamma * lam * running) * m[:, t]
        adv[:, t] = running
    return adv, (adv + v) * m


def _old_reinforce_pp_returns(token_rewards, mask, gamma):
    """The prefix-mask discounted cumsum of REINFORCE++ as it was, kept verbatim as a reference."""
    m = mask.to(torch.promote_types(token_rewards.dtype, torch.float32))
    r = torch.where(mask != 0, token_rewards.to(m.dtype), torch.zeros((), dtype=m.dtype))
    out = torch.zeros_like(r)
    running = torch.zeros_like(r[:, 0])
    for t in reversed(range(r.shape[1])):
        running = r[:, t] + gamma * running
        out[:, t] = running
    return out * m


def _gae_row(r, v, gamma, lam):
    """GAE over one dense list of policy tokens, plain Python."""
    adv, last = [0.0] * len(r), 0.0
    for t in reversed(range(len(r))):
        next_v = v[t + 1] if t + 1 < len(r) else 0.0
        last = r[t] + gamma * next_v - v[t] + gamma * lam * last
        adv[t] = last
    return adv


# ---------------------------------------------------------------- GAE


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0), (0.9, 0.7)])
def test_gae_over_holes_is_gae_over_the_policy_tokens_alone(gamma, lam):
    rewards, values, mask = _inputs(dtype=torch.float64)
    # garbage at masked positions must not matter (observation values, padding)
    rewards = torch.where(mask != 0, rewards, torch.tensor(float("nan"), dtype=rewards.dtype))
    values = torch.where(mask != 0, values, torch.tensor(float("inf"), dtype=values.dtype))
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards=rewards, values=values, mask=mask, gamma=gamma, lam=lam)
    ref_adv, ref_ret = torch.zeros_like(adv), torch.zeros_like(ret)
    for i in range(len(ROWS)):
        idx = (mask[i] != 0).nonzero().squeeze(-1).tolist()
        a = _gae_row([float(rewards[i, t]) for t in idx], [float(values[i, t]) for t in idx], gamma, lam)
        for k, t in enumerate(idx):
            ref_adv[i, t], ref_ret[i, t] = a[k], a[k] + float(values[i, t])
    torch.testing.assert_close(adv, ref_adv)
    torch.testing.assert_close(ret, ref_ret)
    assert (adv[mask == 0] == 0).all() and (ret[mask == 0] == 0).all()


@pytest.mark.parametrize("normalize_std", [False, True])
def test_gae_over_holes_equals_prefix_gae_on_the_compacted_rows(normalize_std):
    rewards, values, mask = _inputs()
    gae = ADVANTAGE_ESTIMATORS.get("gae")
    adv, ret = gae(token_rewards=rewards, values=values, mask=mask, gamma=0.97, lam=0.9, normalize_std=normalize_std)
    (r_c, pmask), (v_c, _) = _compact(rewards, mask), _compact(values, mask)
    adv_c, ret_c = gae(token_rewards=r_c, values=v_c, mask=pmask, gamma=0.97, lam=0.9, normalize_std=normalize_std)
    if normalize_std:  # the batch statistics sum the same tokens in another order
        torch.testing.assert_close(adv, _scatter(adv_c, mask))
    else:  # the same scalar operations on the same values, step for step
        assert torch.equal(adv, _scatter(adv_c, mask))
    assert torch.equal(ret, _scatter(ret_c, mask))


@pytest.mark.parametrize("gamma,lam", [(1.0, 1.0), (0.99, 0.95), (0.5, 0.0)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16])
def test_gae_on_prefix_masks_is_bit_identical_to_the_old_loop(gamma, lam, dtype):
    g = torch.Generator().manual_seed(7)
    lengths = torch.tensor([12, 0, 5, 1, 9, 12, 3, 7])
    mask = mask_from_lengths(lengths, T)
    rewards = torch.randn(8, T, generator=g).to(dtype)
    values = torch.randn(8, T, generator=g).to(dtype)
    values[mask == 0] = float("nan")  # a value head's garbage past the end
    adv, ret = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards=rewards, values=values, mask=mask, gamma=gamma, lam=lam)
    old_adv, old_ret = _old_gae(rewards, values, mask, gamma, lam)
    assert torch.equal(adv, old_adv) and torch.equal(ret, old_ret)
    whitened, _ = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards=rewards, values=values, mask=mask, gamma=gamma,
                                                  lam=lam, normalize_std=True)
    assert torch.equal(whitened, masked_whiten(old_adv, mask))


def test_gae_carries_across_an_observation_instead_of_ending_the_episode():
    # turn 1: tokens 0, 1; observation: 2, 3; turn 2: token 4. Reward only at the very end.
    mask = torch.tensor([[1.0, 1.0, 0.0, 0.0, 1.0]])
    rewards = torch.tensor([[0.0, 0.0, 5.0, 5.0, 1.0]])  # observation rewards are ignored
    values = torch.tensor([[0.1, 0.2, 9.0, 9.0, 0.3]])
    adv, _ = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards=rewards, values=values, mask=mask, gamma=1.0, lam=1.0)
    # gamma = lam = 1: A_t = (sum of the policy tokens' rewards from t on) - V_t
    torch.testing.assert_close(adv, torch.tensor([[1.0 - 0.1, 1.0 - 0.2, 0.0, 0.0, 1.0 - 0.3]]))
    adv, _ = ADVANTAGE_ESTIMATORS.get("gae")(token_rewards=rewards, values=values, mask=mask, gamma=0.5, lam=1.0)
    # one discount per policy token: token 1 sees 0.5 * r_4, not 0.5^3 * r_4
    torch.testing.assert_close(adv[0, 1], torch.tensor(0.5 * 1.0 - 0.2))


# ---------------------------------------------------------------- REINFORCE++


@pytest.mark.parametrize("gamma", [1.0, 0.9, 0.0])
@pytest.mark.parametrize("normalize_std", [False, True])
def test_reinforce_pp_discounts_per_policy_token(gamma, normalize_std):
    rewards, _, mask = _inputs(2, dtype=torch.float64)
    rewards = torch.where(mask != 0, rewards, torch.tensor(float("nan"), dtype=rewards.dtype))
    adv, ret = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(token_rewards=rewards, mask=mask, gamma=gamma,
                                                        normalize_std=normalize_std)
    ref = torch.zeros_like(ret)
    for i in range(len(ROWS)):
        idx = (mask[i] != 0).nonzero().squeeze(-1).tolist()
        r = [float(rewards[i, t]) for t in idx]
        for k, t in enumerate(idx):
            ref[i, t] = sum(gamma ** (j - k) * r[j] for j in range(k, len(r)))
    torch.testing.assert_close(ret, ref)
    torch.testing.assert_close(adv, masked_whiten(ref, mask) if normalize_std else ref)
    (r_c, pmask) = _compact(rewards.nan_to_num(0.0), mask)
    _, ret_c = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(token_rewards=r_c, mask=pmask, gamma=gamma)
    assert torch.equal(ret, _scatter(ret_c, mask))


@pytest.mark.parametrize("gamma", [1.0, 0.9])
def test_reinforce_pp_on_prefix_masks_is_bit_identical_to_the_old_loop(gamma):
    g = torch.Generator().manual_seed(8)
    mask = mask_from_lengths(torch.tensor([12, 0, 5, 1, 9, 12, 3, 7]), T)
    rewards = torch.randn(8, T, generator=g)
    rewards[mask == 0] = float("inf")
    adv, ret = ADVANTAGE_ESTIMATORS.get("reinforce_pp")(token_rewards=rewards, mask=mask, gamma=gamma)
    old = _old_reinforce_pp_returns(rewards, mask, gamma)
    assert torch.equal(ret, old) and torch.equal(adv, masked_whiten(old, mask))


# ---------------------------------------------------------------- group estimators


@pytest.mark.parametrize("name,group_size,normalize_std", [
    ("grpo", 4, True), ("grpo", 4, False), ("dr_grpo", 2, True), ("rloo", 4, False), ("rloo", 8, True)])
def test_group_estimators_put_the_row_advantage_on_policy_tokens_only(name, group_size, normalize_std):
    _, _, mask = _inputs()
    scores = torch.randn(len(ROWS), generator=torch.Generator().manual_seed(3))
    est = ADVANTAGE_ESTIMATORS.get(name)
    adv, ret = est(scores=scores, group_size=group_size, mask=mask, normalize_std=normalize_std)
    _, pmask = _compact(torch.zeros_like(mask), mask)
    adv_c, ret_c = est(scores=scores, group_size=group_size, mask=pmask, normalize_std=normalize_std)
    torch.testing.assert_close(adv, _scatter(adv_c, mask))
    torch.testing.assert_close(ret, _scatter(ret_c, mask))
    assert (adv[mask == 0] == 0).all()
    for i in range(len(ROWS)):  # one value per row on its policy tokens
        row = adv[i][mask[i] != 0]
        assert (row == row[:1]).all()


# ---------------------------------------------------------------- KL-penalised rewards


@pytest.mark.parametrize("estimator", ["k1", "k2", "k3"])
def test_kl_penalized_rewards_score_on_the_policys_last_token(estimator):
    g = torch.Generator().manual_seed(4)
    _, _, mask = _inputs()
    logp, ref = -torch.rand(len(ROWS), T, generator=g), -torch.rand(len(ROWS), T, generator=g)
    scores = torch.randn(len(ROWS), generator=g)
    beta = 0.3
    rewards, kl = kl_penalized_rewards(scores, logp, ref, mask, beta, estimator)
    (lp_c, pmask), (ref_c, _) = _compact(logp, mask), _compact(ref, mask)
    rewards_c, kl_c = kl_penalized_rewards(scores, lp_c, ref_c, pmask, beta, estimator)
    assert torch.equal(rewards, _scatter(rewards_c, mask)) and torch.equal(kl, _scatter(kl_c, mask))
    for i, (length, pm) in enumerate(ROWS):
        valid = [t for t in range(length) if pm[t]]
        expect = torch.zeros(T)
        for t in valid:
            expect[t] = -beta * float(kl[i, t])
        if valid:  # the policy's last token, which need not be the row's last
            expect[valid[-1]] += float(scores[i])
        torch.testing.assert_close(rewards[i], expect)  # an all-zero row gets no score anywhere
    assert rewards[3].abs().sum() == 0 and rewards[5].abs().sum() == 0


# ---------------------------------------------------------------- objectives: no gradient through observations


def _logits_batch(seed=5, V=7):
    g = torch.Generator().manual_seed(seed)
    mask = _mask(ROWS)
    B = len(ROWS)
    logits = torch.randn(B, T, V, generator=g, requires_grad=True)
    targets = torch.randint(0, V, (B, T), generator=g)
    old = logprobs_from_logits(logits.detach() + 0.2 * torch.randn(B, T, V, generator=g), targets)
    mb = {"response_mask": mask, "old_logprobs": old,
          "advantages": torch.randn(B, T, generator=g) * mask,
          "ref_logprobs": old - 0.1 * torch.rand(B, T, generator=g),
          # the engine reports nothing for observation tokens it did not sample
          "rollout_logprobs": torch.where(mask != 0, old + 0.05 * torch.randn(B, T, generator=g), torch.zeros(B, T))}
    return logits, targets, mb


def _ppo():
    return load_config(overrides=["ppo.entropy_coef=0.05", "ppo.kl.placement=loss", "ppo.kl.estimator=k3",
                                  "ppo.tis_cap=2.0", "ppo.clip_eps=0.1"]).ppo


@pytest.mark.parametrize("loss_name", POLICY_LOSSES.names())
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_policy_objectives_have_no_gradient_at_masked_positions(loss_name, agg):
    logits, targets, mb = _logits_batch()
    logp = logprobs_from_logits(logits, targets)
    loss, _ = policy_objective(_ppo(), loss_name, agg, logp, entropy_from_logits(logits), mb, kl_coef=0.2)
    loss.backward()
    masked = mb["response_mask"] == 0
    assert (logits.grad[masked] == 0).all(), "an observation or padding token got a gradient"
    assert (logits.grad[~masked] != 0).any()
    # and the loss is blind to what the model says at masked positions
    with torch.no_grad():
        moved = logits + 3.0 * masked.unsqueeze(-1) * torch.randn_like(logits)
        again, _ = policy_objective(_ppo(), loss_name, agg, logprobs_from_logits(moved, targets),
                                    entropy_from_logits(moved), mb, kl_coef=0.2)
    assert again.item() == loss.item()


@pytest.mark.parametrize("loss_name", POLICY_LOSSES.names())
@pytest.mark.parametrize("agg", AGGREGATIONS)
def test_policy_objectives_over_holes_equal_the_compacted_rows(loss_name, agg):
    logits, targets, mb = _logits_batch(6)
    mask = mb["response_mask"]
    logp = logprobs_from_logits(logits.detach(), targets)
    entropy = entropy_from_logits(logits.detach())
    loss, metrics = policy_objective(_ppo(), loss_name, agg, logp, entropy, mb, kl_coef=0.2)
    compact = {k: _compact(v, mask)[0] for k, v in mb.items() if k != "response_mask"}
    compact["response_mask"] = _compact(mask, mask)[1]
    loss_c, metrics_c = policy_objective(_ppo(), loss_name, agg, _compact(logp, mask)[0],
                                         _compact(entropy, mask)[0], compact, kl_coef=0.2)
    torch.testing.assert_close(loss, loss_c)
    assert metrics.keys() == metrics_c.keys()
    for k in metrics:
        assert metrics[k] == pytest.approx(metrics_c[k], rel=1e-5, abs=1e-6), k


def test_value_objective_has_no_gradient_at_masked_positions():
    for name in VALUE_LOSSES.names():
        assert name == "clipped"  # value_objective calls the one registered value loss
    g = torch.Generator().manual_seed(9)
    mask = _mask(ROWS)
    values = torch.randn(len(ROWS), T, generator=g, requires_grad=True)
    mb = {"response_mask": mask, "old_values": torch.randn(len(ROWS), T, generator=g),
          "returns": torch.randn(len(ROWS), T, generator=g)}
    loss, _ = value_objective(_ppo(), values, mb)
    loss.backward()
    assert (values.grad[mask == 0] == 0).all() and (values.grad[mask != 0] != 0).any()


# ---------------------------------------------------------------- build_batch


def test_build_batch_policy_masks_and_the_length_mask():
    prompts = [[5, 6], [7], [8, 9, 10]]
    responses = [[11, 12, 30, 31, 13, 2], [14, 2], [15, 32, 33]]  # 3x: observation tokens
    policy = [[1, 1, 0, 0, 1, 1], [1, 1], [1, 0, 0]]
    lps = [[-0.1, -0.2, 0.0, 0.0, -0.3, -0.4], [-0.5, -0.6], [-0.7, 0.0, 0.0]]
    b = build_batch(prompts, responses, pad_id=2, rollout_logprobs=lps, policy_masks=policy)
    plain = build_batch(prompts, responses, pad_id=2, rollout_logprobs=lps)
    assert b["response_mask"].tolist() == [[1, 1, 0, 0, 1, 1], [1, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]
    assert b["response_mask"].dtype == plain["response_mask"].dtype
    for k in plain:  # only the response mask changes; the lengths still bound every row
        if k != "response_mask":
            assert torch.equal(b[k], plain[k]), k
    assert b["rollout_logprobs"][0].tolist() == pytest.approx(lps[0])
    assert b["response_lengths"].tolist() == [6, 2, 3]
    mb = trim_padding({k: v[1:] for k, v in b.items()})  # responses of 2 and 3 tokens: 3 columns kept
    assert mb["response_mask"].tolist() == [[1, 1, 0], [1, 0, 0]]
    assert torch.equal(build_batch(prompts, responses, 2, policy_masks=[[1] * 6, [1] * 2, [1] * 3])["response_mask"],
                       plain["response_mask"])


def test_build_batch_rejects_policy_masks_that_do_not_fit():
    with pytest.raises(ValueError, match="row 1: policy mask of 1 entries for a response of 2 tokens"):
        build_batch([[1], [2]], [[3, 4], [5, 6]], 0, policy_masks=[[1, 1], [1]])
    with pytest.raises(ValueError, match="1 policy masks but 2 responses"):
        build_batch([[1], [2]], [[3, 4], [5, 6]], 0, policy_masks=[[1, 1]])
