"""GRPO: Group Relative Policy Optimization (Shao et al. 2024, DeepSeekMath).

A group of responses shares one prompt (the vector env's `prompts` reset option). Each
response's advantage is its score standardised within its group, (R - mean) / std, given
to every one of its tokens; no critic. The update is PPO's clipped surrogate over a few
epochs, and the KL to the reference is a loss term (k3 per token, weight beta) instead of
a reward penalty.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agents.common import (
    Run,
    RunConfig,
    check_finite,
    rng_states,
    run_loop,
    set_rng_states,
    setup,
    trainable_copy,
)
from agents.core import kl_k1, kl_k3, masked_mean, policy_loss_clipped
from agents.rollout import (
    collect_rollout,
    forward_responses,
    logprobs_of,
    response_logprobs,
    rollout_metrics,
)


@dataclass
class GRPOConfig(RunConfig):
    run_dir: str = "runs/grpo"
    """Where metrics.csv, TensorBoard events and checkpoints go."""
    group_size: int = 8
    """Responses per prompt (num_envs must be a multiple of it)."""
    learning_rate: float = 1e-4
    """Adam learning rate (best of 2e-5, 1e-4, 3e-4 on seed 0 at 20k env steps)."""
    beta: float = 0.05
    """Weight of the per-token k3 KL to the reference in the loss."""
    clip_coef: float = 0.2
    """Policy ratio clip."""
    update_epochs: int = 2
    """Passes over each rollout."""
    num_minibatches: int = 2
    """Minibatches per pass."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""


def group_advantages(scores: torch.Tensor, group_size: int, eps: float = 1e-4) -> torch.Tensor:
    """scores (N,) in groups of `group_size` consecutive responses -> (R - mean) / (std + eps)."""
    g = scores.view(-1, group_size)  # (G, k)
    return ((g - g.mean(1, keepdim=True)) / (g.std(1, keepdim=True) + eps)).view(-1)


def train(cfg: GRPOConfig) -> dict:
    if cfg.group_size < 2 or cfg.num_envs % cfg.group_size:
        raise ValueError(f"group_size={cfg.group_size} must be >= 2 and divide "
                         f"num_envs={cfg.num_envs}")
    s = setup(cfg)
    policy = trainable_copy(s.reference)
    # fused: one kernel updates every tensor (a for-loop Adam costs ~5x more per step here)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=True)

    def iteration(it: int, progress: float) -> dict:
        prompts = s.sample_prompts(cfg.num_envs, group_size=cfg.group_size)
        ro = collect_rollout(s.envs, policy, prompts, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, generator=s.generator,
                             pad_id=s.tokenizer.pad_id)
        mask = ro.response_mask.float()  # (N, T)
        logp_ref = response_logprobs(s.reference, ro, cfg.temperature)  # (N, T)
        with torch.no_grad():
            old_logp = logprobs_of(forward_responses(policy, ro), ro.response_ids,
                                   cfg.temperature)
        adv = group_advantages(ro.scores, cfg.group_size)[:, None].expand_as(mask)  # (N, T)
        n = cfg.num_envs
        mb_size = max(1, n // cfg.num_minibatches)
        losses, kls = [], []
        for _ in range(cfg.update_epochs):
            for mb in torch.randperm(n, generator=s.generator).split(mb_size):
                logp = logprobs_of(forward_responses(policy, ro, mb), ro.response_ids[mb],
                                   cfg.temperature)
                pg_loss, _ = policy_loss_clipped(logp, old_logp[mb], adv[mb], mask[mb],
                                                 cfg.clip_coef)
                kl = masked_mean(kl_k3(logp, logp_ref[mb]), mask[mb])
                loss = pg_loss + cfg.beta * kl
                check_finite(loss, it)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
                optimizer.step()
                losses.append(loss.item())
                kls.append(kl.item())
        seq_kl = (kl_k1(old_logp, logp_ref) * mask).sum(1)
        return {**rollout_metrics(ro, seq_kl), "losses/policy_loss": sum(losses) / len(losses),
                "objective/kl_k3_token": sum(kls) / len(kls)}

    return run_loop(Run(cfg, policy, s.reference, {"policy": policy}, optimizer, s.envs,
                        s.tokenizer.pad_id, iteration,
                        lambda: rng_states(s), lambda st: set_rng_states(s, st), s.generator),
                    "grpo")
