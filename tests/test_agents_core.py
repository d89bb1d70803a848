"""Tests for agents/core.py: hand-computed GAE, KL estimators, PPO losses, ..."""

import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from agents.core import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    entropy_from_logits,
    explained_variance,
    kl_k1,
    kl_k3,
    masked_mean,
    masked_var,
    masked_whiten,
    policy_loss_clipped,
    value_loss_clipped,
)

T_ = torch.tensor


def close(a, b, atol=1e-5):
    torch.testing.assert_close(
        torch.as_tensor(a, dtype=torch.float64),
        torch.as_tensor(b, dtype=torch.float64),
        atol=atol,
        rtol=0,
    )


# --------------------------------------------------------------------------- #
# masked statistics
# --------------------------------------------------------------------------- #
def test_masked_mean_and_var():
    x = T_([[1.0, 2.0, 3.0, 100.0], [4.0, float("nan"), 0.0, 0.0]])
    mask = T_([[True, True, True, False], [True, False, False, False]])
    close(masked_mean(x, mask), (1 + 2 + 3 + 4) / 4)
    close(masked_mean(x, mask, dim=1), [2.0, 4.0])
    valid = T_([1.0, 2.0, 3.0, 4.0])
    close(masked_var(x, mask), valid.var(unbiased=True))
    close(masked_var(x, mask, unbiased=False), valid.var(unbiased=False))
    # empty mask: 0, not NaN
    close(masked_mean(x, torch.zeros_like(mask)), 0.0)


def test_masked_whiten_stats():
    g = torch.Generator().manual_seed(0)
    x = torch.randn(4, 10, generator=g) * 3.0 + 5.0
    mask = torch.ones(4, 10, dtype=torch.bool)
    mask[1, 6:] = False
    mask[3, 2:] = False
    w = masked_whiten(x, mask)
    close(w[mask].mean(), 0.0)
    close(w[mask].std(unbiased=True), 1.0, atol=1e-4)
    assert (w[~mask] == 0).all()
    # shift_mean=False: unit std but the original mean is kept
    w2 = masked_whiten(x, mask, shift_mean=False)
    close(w2[mask].mean(), x[mask].mean(), atol=1e-4)
    close(w2[mask].std(unbiased=True), 1.0, atol=1e-4)
    assert (w2[~mask] == 0).all()


def test_masked_whiten_guards():
    # one valid entry: centred -> 0 (or unchanged when shift_mean=False)
    x = T_([[3.0, 5.0, 7.0]])
    mask = T_([[True, False, False]])
    close(masked_whiten(x, mask), [[0.0, 0.0, 0.0]])
    close(masked_whiten(x, mask, shift_mean=False), [[3.0, 0.0, 0.0]])
    # constant input: no division by ~0
    c = torch.full((2, 3), 2.5)
    m = torch.ones(2, 3, dtype=torch.bool)
    out = masked_whiten(c, m)
    assert torch.isfinite(out).all()
    close(out, torch.zeros(2, 3))
    close(masked_whiten(c, m, shift_mean=False), c)
    # no valid entry at all
    out = masked_whiten(x, torch.zeros_like(mask))
    assert torch.isfinite(out).all() and (out == 0).all()


finite32 = st.floats(-1e6, 1e6, allow_nan=False, allow_infinity=False, width=32)


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(finite32, st.booleans()), min_size=1, max_size=24), st.booleans())
def test_masked_whiten_never_nan(entries, shift_mean):
    x = T_([v for v, _ in entries], dtype=torch.float32).unsqueeze(0)  # (1, T)
    mask = T_([m for _, m in entries]).unsqueeze(0)  # (1, T)
    out = masked_whiten(x, mask, shift_mean=shift_mean)
    assert out.shape == x.shape
    assert torch.isfinite(out).all()
    assert (out[~mask] == 0).all()


# --------------------------------------------------------------------------- #
# GAE
# --------------------------------------------------------------------------- #
def test_compute_gae_hand_computed():
    gamma, lam = 0.9, 0.8  # gamma * lam = 0.72
    # row 0: full length 3.  row 1: length 2, tail is garbage that must not matter.
    rewards = T_([[1.0, 0.0, 2.0], [1.0, 2.0, 99.0]])
    values = T_([[0.5, 1.0, 1.5], [0.5, 1.0, 7.0]])
    mask = T_([[True, True, True], [True, True, False]])
    adv, ret = compute_gae(rewards, values, mask, gamma=gamma, lam=lam)
    # row 0 (last token terminal, no bootstrap):
    #   d2 = 2 + 0            - 1.5 = 0.5              A2 = 0.5
    #   d1 = 0 + 0.9 * 1.5    - 1.0 = 0.35             A1 = 0.35 + 0.72 * 0.5  = 0.71
    #   d0 = 1 + 0.9 * 1.0    - 0.5 = 1.4              A0 = 1.4  + 0.72 * 0.71 = 1.9112
    # row 1 (ends at t=1; V=7 and r=99 at t=2 are padding):
    #   d1 = 2 + 0            - 1.0 = 1.0              A1 = 1.0
    #   d0 = 1 + 0.9 * 1.0    - 0.5 = 1.4              A0 = 1.4 + 0.72 * 1.0 = 2.12
    close(adv, [[1.9112, 0.71, 0.5], [2.12, 1.0, 0.0]])
    close(ret, [[1.9112 + 0.5, 0.71 + 1.0, 0.5 + 1.5], [2.12 + 0.5, 1.0 + 1.0, 0.0]])

    # the masked tail contributes nothing, even if it is NaN
    rewards2, values2 = rewards.clone(), values.clone()
    rewards2[1, 2], values2[1, 2] = float("nan"), float("nan")
    adv2, ret2 = compute_gae(rewards2, values2, mask, gamma=gamma, lam=lam)
    close(adv2, adv)
    close(ret2, ret)

    # no terminal mask (all three tokens of row 1 real) gives a different answer:
    adv3, _ = compute_gae(rewards, values, torch.ones_like(mask), gamma=gamma, lam=lam)
    assert not torch.allclose(adv3[1], adv[1])


def test_compute_gae_lambda1_gamma1_is_reward_to_go():
    g = torch.Generator().manual_seed(1)
    B, T = 5, 7
    rewards = torch.randn(B, T, generator=g)
    values = torch.randn(B, T, generator=g)
    lengths = T_([7, 1, 4, 6, 3])
    mask = torch.arange(T)[None, :] < lengths[:, None]  # (B, T)
    adv, ret = compute_gae(rewards, values, mask, gamma=1.0, lam=1.0)
    r = rewards * mask
    reward_to_go = r.flip(1).cumsum(1).flip(1)  # sum_{k >= t} r_k
    close(adv, (reward_to_go - values) * mask)
    close(ret, reward_to_go * mask)


# --------------------------------------------------------------------------- #
# KL estimators and controllers
# --------------------------------------------------------------------------- #
P = T_([0.5, 0.3, 0.2], dtype=torch.float64)  # policy pi
Q = T_([0.25, 0.25, 0.5], dtype=torch.float64)  # reference pi_ref
TRUE_KL = 0.5 * math.log(0.5 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.2 * math.log(0.2 / 0.5)


def test_kl_k1_k3_direct_and_exact_expectation():
    logp, logq = P.log(), Q.log()
    k1 = kl_k1(logp, logq)
    k3 = kl_k3(logp, logq)
    close(k1, [math.log(0.5 / 0.25), math.log(0.3 / 0.25), math.log(0.2 / 0.5)], atol=1e-12)
    r = Q / P  # pi_ref / pi per outcome
    close(k3, (r - 1) - r.log(), atol=1e-12)
    assert (k3 >= 0).all()
    assert (k1 < 0).any()  # k1 can be negative per sample
    # exact expectations under pi (enumerate the 3 outcomes)
    close((P * k1).sum(), TRUE_KL, atol=1e-12)
    close((P * k3).sum(), TRUE_KL, atol=1e-12)


def test_kl_k1_sampled_mean():
    g = torch.Generator().manual_seed(3)
    idx = torch.multinomial(P, 200_000, replacement=True, generator=g)
    logp, logq = P.log()[idx], Q.log()[idx]
    close(kl_k1(logp, logq).mean(), TRUE_KL, atol=5e-3)
    close(kl_k3(logp, logq).mean(), TRUE_KL, atol=5e-3)


def test_kl_k3_nonnegative_everywhere():
    g = torch.Generator().manual_seed(4)
    logp = torch.randn(10_000, generator=g) * 5
    logq = torch.randn(10_000, generator=g) * 5
    assert (kl_k3(logp, logq) >= 0).all()
    assert (kl_k3(logp, logp) == 0).all()


def test_fixed_kl_controller():
    c = FixedKLController(0.05)
    for kl in (0.0, 1.0, 100.0):
        c.update(kl, 1000)
    assert c.value == 0.05
    c2 = FixedKLController(1.0)
    c2.load_state_dict(c.state_dict())
    assert c2.value == 0.05


@pytest.mark.parametrize(
    "current_kl, expected",
    [
        (6.6, 0.2 * (1 + 0.1 * 256 / 10_000)),  # e = 6.6/6 - 1 = 0.1     -> 0.200512
        (6.0, 0.2),  # e = 0
        (12.0, 0.2 * (1 + 0.2 * 256 / 10_000)),  # e = 1.0 clipped to 0.2 -> 0.201024
        (0.0, 0.2 * (1 - 0.2 * 256 / 10_000)),  # e = -1.0 clipped to -0.2 -> 0.198976
    ],
)
def test_adaptive_kl_controller(current_kl, expected):
    c = AdaptiveKLController(init_kl_coef=0.2, target=6.0, horizon=10_000)
    c.update(current_kl, n_steps=256)
    assert c.value == pytest.approx(expected, abs=1e-12)


def test_adaptive_kl_controller_state_dict():
    c = AdaptiveKLController(0.2, 6.0, 10_000)
    c.update(12.0, 256)
    c.update(12.0, 256)
    assert c.value == pytest.approx(0.2 * 1.00512**2)
    c2 = AdaptiveKLController(1.0, 1.0, 1)
    c2.load_state_dict(c.state_dict())
    assert (c2.value, c2.target, c2.horizon) == (c.value, 6.0, 10_000)


# --------------------------------------------------------------------------- #
# PPO losses
# --------------------------------------------------------------------------- #
def test_policy_loss_clipped_hand_computed():
    ratio = T_([1.5, 0.5, 1.1, 3.0])
    logp_old = torch.zeros(4)
    logp_new = ratio.log().requires_grad_(True)
    adv = T_([1.0, 2.0, -1.0, 100.0])
    mask = T_([True, True, True, False])
    loss, stats = policy_loss_clipped(logp_new, logp_old, adv, mask, clip_range=0.2)
    # token 0: A=+1,  r=1.5: max(-1.5, -1*1.2) = -1.2   (clipped)
    # token 1: A=+2,  r=0.5: max(-1.0, -2*0.8) = -1.0   (unclipped term is the pessimistic one)
    # token 2: A=-1,  r=1.1: max( 1.1,  1.1)   =  1.1
    # token 3: masked
    assert loss.item() == pytest.approx((-1.2 - 1.0 + 1.1) / 3, abs=1e-6)
    assert stats["clipfrac"] == pytest.approx(2 / 3)  # |r-1| > 0.2 for tokens 0 and 1
    approx_kl = ((0.5 - math.log(1.5)) + (-0.5 - math.log(0.5)) + (0.1 - math.log(1.1))) / 3
    assert stats["approx_kl"] == pytest.approx(approx_kl, abs=1e-6)  # ~0.0974573
    assert isinstance(stats["clipfrac"], float) and isinstance(stats["approx_kl"], float)
    # gradient d loss / d logp = -A * r / 3 on unclipped tokens, 0 on clipped/masked ones
    loss.backward()
    close(logp_new.grad, [0.0, -2 * 0.5 / 3, 1.1 / 3, 0.0])


def test_value_loss_clipped_hand_computed():
    v_new = T_([1.5, 1.1, -0.5, 100.0])
    v_old = T_([1.0, 1.0, 0.0, 0.0])
    returns = T_([2.0, 0.0, 0.0, 0.0])
    mask = T_([True, True, True, False])
    # token 0: (1.5-2)^2 = 0.25, v_clip = 1.2 -> (1.2-2)^2 = 0.64      -> 0.64
    # token 1: (1.1-0)^2 = 1.21, v_clip = 1.1                          -> 1.21
    # token 2: (-0.5-0)^2 = 0.25, v_clip = -0.2 -> 0.04                -> 0.25
    loss = value_loss_clipped(v_new, v_old, returns, mask, clip_range_vf=0.2)
    assert loss.item() == pytest.approx(0.5 * (0.64 + 1.21 + 0.25) / 3, abs=1e-6)  # 0.35
    loss_u = value_loss_clipped(v_new, v_old, returns, mask, clip_range_vf=None)
    assert loss_u.item() == pytest.approx(0.5 * (0.25 + 1.21 + 0.25) / 3, abs=1e-6)  # 0.285


# --------------------------------------------------------------------------- #
# diagnostics, schedules, seeding, running stats
# --------------------------------------------------------------------------- #
def test_entropy_from_logits():
    assert torch.allclose(
        entropy_from_logits(torch.zeros(2, 5, 7)), torch.full((2, 5), math.log(7))
    )
    close(entropy_from_logits(T_([1000.0, 1000.0])), math.log(2))  # no overflow
    close(
        entropy_from_logits(T_([0.3, -1.2, 2.0])),
        -(
            torch.softmax(T_([0.3, -1.2, 2.0]), -1) * torch.log_softmax(T_([0.3, -1.2, 2.0]), -1)
        ).sum(),
    )
    logits = T_([0.0, 0.0, float("-inf")], requires_grad=True)  # banned token
    h = entropy_from_logits(logits)
    close(h, math.log(2))
    h.backward()
    assert torch.isfinite(logits.grad).all()


def test_explained_variance():
    y = T_([1.0, 2.0, 3.0, 4.0])
    assert explained_variance(y, y) == pytest.approx(1.0)
    assert explained_variance(torch.full((4,), 2.5), y) == pytest.approx(0.0)
    assert math.isnan(explained_variance(y, torch.ones(4)))
    mask = T_([True, True, True, False])
    assert explained_variance(T_([1.0, 2.0, 3.0, -50.0]), y, mask) == pytest.approx(1.0)


