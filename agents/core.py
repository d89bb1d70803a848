"""The small shared RL core: masked statistics, GAE, KL estimators, PPO losses.

Everything here is a pure torch function (or a tiny stateful helper) with no
model code, so each piece can be read, tested and reused on its own. The
conventions, used throughout the project:

* Token-level tensors are batch-major, ``(B, T)``: ``B`` responses, ``T``
  response positions. A boolean ``mask`` marks the real tokens; padding is
  ``False``. Statistics are taken over the real tokens only, and anything we
  return at a padded position is ``0`` (never NaN), so padding cannot leak into
  losses or logs.

References: Schulman et al. 2016 (GAE), Schulman et al. 2017 (PPO), Ziegler et
al. 2019 and Ouyang et al. 2022 (KL-penalised RLHF), John Schulman's note
"Approximating KL Divergence" (k1/k3 estimators), CleanRL's ppo.py.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import torch
from torch import Tensor

__all__ = [
    "AdaptiveKLController",
    "FixedKLController",
    "aggregate_tokens",
    "compute_gae",
    "entropy_from_logits",
    "explained_variance",
    "kl_k1",
    "kl_k3",
    "masked_mean",
    "masked_var",
    "masked_whiten",
    "policy_loss_clipped",
    "sequence_policy_gradient_loss",
    "value_loss_clipped",
]


# --------------------------------------------------------------------------- #
# Masked statistics
# --------------------------------------------------------------------------- #
def _masked_zero(x: Tensor, mask: Tensor) -> Tensor:
    """``x`` with padded entries replaced by exact zeros.

    We use ``where`` rather than ``x * mask`` so that garbage (inf/NaN) sitting
    in padded positions cannot turn into NaN via ``inf * 0``.
    """
    return torch.where(mask.bool(), x, torch.zeros((), dtype=x.dtype, device=x.device))


def masked_mean(x: Tensor, mask: Tensor, dim: int | None = None) -> Tensor:
    """Mean of ``x`` over the entries where ``mask`` is True.

    ``dim=None`` reduces everything to a scalar; otherwise reduces along
    ``dim``. A slice with no valid entry has mean 0 (not NaN): the denominator
    is clamped to 1 so an empty batch gives a harmless zero loss.
    """
    m = mask.to(x.dtype)  # same shape as x
    total = _masked_zero(x, mask)
    if dim is None:
        return total.sum() / m.sum().clamp(min=1.0)
    return total.sum(dim) / m.sum(dim).clamp(min=1.0)


def masked_var(x: Tensor, mask: Tensor, unbiased: bool = True) -> Tensor:
    """Variance of ``x`` over the valid entries (a scalar).

    ``unbiased=True`` applies Bessel's correction n/(n-1). With fewer than two
    valid entries the variance is undefined; we return 0 instead of dividing by
    zero (callers such as :func:`masked_whiten` treat 0 as "do not scale").
    """
    mean = masked_mean(x, mask)
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = float(mask.sum())
        var = var * (n / (n - 1.0)) if n > 1 else torch.zeros_like(var)
    return var


def masked_whiten(x: Tensor, mask: Tensor, shift_mean: bool = True, eps: float = 1e-8) -> Tensor:
    """Normalise ``x`` to mean 0, std 1 over the valid entries.

    Whitening advantages per batch makes the policy-gradient step size roughly
    independent of the reward scale. ``shift_mean=False`` rescales but keeps
    the original mean (used for rewards, where the sign carries meaning).

    Guard: with fewer than 2 valid entries, or (near-)constant valid entries,
    the std is ~0 and dividing would blow up. We then only centre
    (``x - mean``), or return ``x`` unchanged when ``shift_mean=False``.
    Padded entries are always returned as 0, and the result is never NaN for
    finite input.
    """
    valid = mask.bool()
    n = int(valid.sum())
    mean = masked_mean(x, valid)
    degenerate = n < 2
    if not degenerate:
        vals = x[valid]  # (n,)
        var = masked_var(x, valid)
        # exact constant input, or a variance too small to divide by safely
        degenerate = bool(vals.max() == vals.min()) or bool(var < eps)
    if degenerate:
        out = x - mean if shift_mean else x
    else:
        out = (x - mean) * torch.rsqrt(var + eps)
        if not shift_mean:
            out = out + mean
    return _masked_zero(out, valid)


# --------------------------------------------------------------------------- #
# Generalised advantage estimation
# --------------------------------------------------------------------------- #
@torch.no_grad()
def compute_gae(
    rewards: Tensor, values: Tensor, mask: Tensor, gamma: float = 1.0, lam: float = 0.95
) -> tuple[Tensor, Tensor]:
    """GAE over token sequences, one episode per row.

    Args:
        rewards: (B, T) per-token rewards (e.g. -beta*KL per token, plus the
            reward-model score on the last real token).
        values: (B, T) value estimates V(s_t) for each token position.
        mask: (B, T) True on real response tokens. Responses may be shorter
            than T; their tail is padding.

    The episode of row b ends at its last real token: that token is terminal,
    so nothing is bootstrapped beyond it (next value = 0). Padded positions
    are skipped entirely: they neither get an advantage nor pass one on, and
    for a real token the "next" state is the next *real* token of its row.

        delta_t = r_t + gamma * V_{next} - V_t
        A_t     = delta_t + gamma * lam * A_{next}

    Returns ``(advantages, returns)``, both (B, T), with
    ``returns = advantages + values`` (the value-function target) and zeros at
    padded positions. Computed without gradient: these are fixed targets.
    """
    valid = mask.bool()  # (B, T)
    rewards = _masked_zero(rewards.detach(), valid)  # (B, T)
    values = _masked_zero(values.detach(), valid)  # (B, T)
    B, T = rewards.shape
    advantages = torch.zeros_like(rewards)  # (B, T)
    next_value = torch.zeros(B, dtype=rewards.dtype, device=rewards.device)  # (B,)
    next_adv = torch.zeros_like(next_value)  # (B,)
    for t in reversed(range(T)):
        delta = rewards[:, t] + gamma * next_value - values[:, t]  # (B,)
        adv_t = delta + gamma * lam * next_adv  # (B,)
        m = valid[:, t]  # (B,)
        # real token: record and carry its value/advantage backwards;
        # padding: leave the carried "next" quantities untouched.
        advantages[:, t] = torch.where(m, adv_t, torch.zeros_like(adv_t))
        next_value = torch.where(m, values[:, t], next_value)
        next_adv = torch.where(m, adv_t, next_adv)
    returns = _masked_zero(advantages + values, valid)  # (B, T)
    return advantages, returns


# --------------------------------------------------------------------------- #
# KL estimators and controllers
# --------------------------------------------------------------------------- #
def kl_k1(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k1 estimate of KL(pi || pi_ref): ``logp - logp_ref``.

    For tokens sampled from pi its expectation is exactly the KL, but single
    samples are noisy and can be negative. This is the per-token penalty used
    in InstructGPT-style reward shaping.
    """
    return logp - logp_ref


def kl_k3(logp: Tensor, logp_ref: Tensor) -> Tensor:
    """Per-token k3 estimate of KL(pi || pi_ref) (Schulman's note).

    With ``r = pi_ref / pi = exp(logp_ref - logp)``, ``k3 = (r - 1) - log r``.
    Since E_pi[r] = 1, the ``r - 1`` term is a zero-mean control variate: k3 is
    still unbiased for tokens sampled from pi, has lower variance than k1, and
    is always >= 0 (because log r <= r - 1). ``expm1`` keeps it accurate when
    r is close to 1; the clamp removes tiny negative rounding errors.
    """
    log_r = logp_ref - logp
    return (torch.expm1(log_r) - log_r).clamp(min=0.0)


class FixedKLController:
    """A constant KL coefficient beta (``update`` does nothing)."""

    def __init__(self, kl_coef: float):
        self.value = float(kl_coef)

    def update(self, current_kl: float, n_steps: int) -> None:
        """No-op: kept so both controllers are interchangeable."""

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value = float(d["value"])


class AdaptiveKLController:
    """Adapt beta so that the measured KL tracks a target (Ziegler et al. 2019).

    A proportional controller on log(beta):
        e     = clip(current_kl / target - 1, -0.2, 0.2)
        beta *= 1 + e * n_steps / horizon
    KL above target raises beta (stronger pull towards the reference model),
    below target lowers it. The clip bounds the change per update, and
    ``horizon`` sets how many samples it takes to react.
    """

    def __init__(self, init_kl_coef: float, target: float, horizon: int):
        self.value = float(init_kl_coef)
        self.target = float(target)
        self.horizon = int(horizon)

    def update(self, current_kl: float, n_steps: int) -> None:
        error = float(np.clip(current_kl / self.target - 1.0, -0.2, 0.2))
        self.value *= 1.0 + error * n_steps / self.horizon

    def state_dict(self) -> dict[str, Any]:
        return {"value": self.value, "target": self.target, "horizon": self.horizon}

    def load_state_dict(self, d: dict[str, Any]) -> None:
        self.value = float(d["value"])
        self.target = float(d.get("target", self.target))
        self.horizon = int(d.get("horizon", self.horizon))


# --------------------------------------------------------------------------- #
# PPO losses
# --------------------------------------------------------------------------- #
def aggregate_tokens(x: Tensor, mask: Tensor, mode: str = "token_mean",
                     max_len: int | None = None) -> Tensor:
    """Per-token losses (B, T) -> a scalar, over the real tokens.

    "token_mean":    the mean over every real token of the batch;
    "sequence_mean": each sequence's mean, then the mean over sequences (the GRPO paper:
                     a token of a short response weighs more than one of a long response);
    "constant":      the sum over real tokens / (B * max_len) (Dr. GRPO, Liu et al. 2025:
                     every token weighs the same whatever its response's length).
    """
    if mode == "token_mean":
        return masked_mean(x, mask)
    if mode == "sequence_mean":
        return masked_mean(x, mask, dim=1).mean()
    if mode == "constant":
        if max_len is None:
            raise ValueError('aggregate_tokens(mode="constant") needs max_len')
        return _masked_zero(x, mask).sum() / (x.shape[0] * max_len)
    raise ValueError(f"unknown aggregation {mode!r}; valid: 'token_mean', 'sequence_mean', "
                     f"'constant'")


def policy_loss_clipped(
    logp_new: Tensor, logp_old: Tensor, advantages: Tensor, mask: Tensor, clip_range: float,
    aggregate: str = "token_mean", max_len: int | None = None,
) -> tuple[Tensor, dict[str, float]]:
    """PPO clipped surrogate loss over valid tokens (averaged as `aggregate_tokens` says).

    All inputs are (B, T) (or any common shape). With ratio = pi_new/pi_old:
        loss = mean( max(-A * ratio, -A * clip(ratio, 1-c, 1+c)) )
    i.e. the pessimistic of the two surrogates, so moving the ratio outside
    [1-c, 1+c] in the advantageous direction earns nothing.

    Stats (Python floats, no gradient):
        clipfrac:  fraction of tokens with |ratio - 1| > c (as in CleanRL)
        approx_kl: mean of (ratio - 1) - log ratio, the k3 estimate of
                   KL(pi_old || pi_new) on the old policy's samples.
    """
    log_ratio = logp_new - logp_old.detach()  # (B, T)
    ratio = torch.exp(log_ratio)  # (B, T)
    adv = advantages.detach()  # (B, T)
    pg_loss1 = -adv * ratio
    pg_loss2 = -adv * torch.clamp(ratio, 1.0 - clip_range, 1.0 + clip_range)
    loss = aggregate_tokens(torch.max(pg_loss1, pg_loss2), mask, aggregate, max_len)
    with torch.no_grad():
        clipfrac = masked_mean(((ratio - 1.0).abs() > clip_range).to(ratio.dtype), mask)
        approx_kl = masked_mean((ratio - 1.0) - log_ratio, mask)
    return loss, {"clipfrac": float(clipfrac), "approx_kl": float(approx_kl)}


def value_loss_clipped(
    values_new: Tensor,
    values_old: Tensor,
    returns: Tensor,
    mask: Tensor,
    clip_range_vf: float | None,
) -> Tensor:
    """Value-function loss with optional PPO-style clipping, over valid tokens.

        v_clipped = v_old + clamp(v - v_old, -c, c)
        loss      = 0.5 * mean( max((v - R)^2, (v_clipped - R)^2) )

    Clipping keeps the value head from jumping far from the values used to
    compute the advantages. ``clip_range_vf=None`` gives plain 0.5 * MSE.
    """
    returns = returns.detach()
    vf_loss1 = (values_new - returns) ** 2  # (B, T)
    if clip_range_vf is None:
        return 0.5 * masked_mean(vf_loss1, mask)
    values_old = values_old.detach()
    v_clipped = values_old + torch.clamp(values_new - values_old, -clip_range_vf, clip_range_vf)
    vf_loss2 = (v_clipped - returns) ** 2  # (B, T)
    return 0.5 * masked_mean(torch.max(vf_loss1, vf_loss2), mask)


# --------------------------------------------------------------------------- #
# Diagnostics
# --------------------------------------------------------------------------- #
def entropy_from_logits(logits: Tensor) -> Tensor:
    """Entropy of softmax(logits) over the last axis: (..., V) -> (...).

    Works in log space (``log_softmax``) so large logits do not overflow.
    Logits of -inf (banned tokens) have p = 0 and contribute 0: we clamp
    log p to the most negative finite number so 0 * log 0 is 0, not NaN
    (in the forward and in the backward pass).
    """
    logp = torch.log_softmax(logits, dim=-1)  # (..., V)
    logp = logp.clamp(min=torch.finfo(logp.dtype).min)
    return -(logp.exp() * logp).sum(-1)  # (...)


def explained_variance(y_pred: Tensor, y_true: Tensor, mask: Tensor | None = None) -> float:
    """1 - Var[y_true - y_pred] / Var[y_true], over valid entries.

    1 is a perfect value function, 0 is as good as predicting the mean, and
    negative is worse than that. NaN when Var[y_true] == 0 (as in SB3).
    """
    y_pred, y_true = y_pred.detach(), y_true.detach()
    if mask is None:
        mask = torch.ones_like(y_true, dtype=torch.bool)
    var_y = float(masked_var(y_true, mask, unbiased=False))
    if var_y == 0.0:
        return float("nan")
    return 1.0 - float(masked_var(y_true - y_pred, mask, unbiased=False)) / var_y


def sequence_policy_gradient_loss(logp: Tensor, advantages: Tensor, mask: Tensor) -> Tensor:
    """REINFORCE-family loss with one advantage per response.

    logp (B, T) log-probs of the sampled tokens (with grad), advantages (B,), mask (B, T).
    -> - mean over responses of advantage * sum_t logp_t  (the score-function estimator).
    """
    seq_logp = (logp * mask).sum(1)  # (B,)
    return -(advantages.detach() * seq_logp).mean()
