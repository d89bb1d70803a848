"""RLOO: REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024).

Sample k responses per prompt. Each response's baseline is the mean return of the other
k-1 responses to the same prompt: an unbiased, per-prompt baseline with no critic and no
moving average. Return = reward-model score - beta * KL to the reference (sequence k1).
One gradient step of -A * sum_t log pi per rollout.
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
from agents.core import kl_k1, sequence_policy_gradient_loss
from agents.rollout import (
    collect_rollout,
    forward_responses,
    logprobs_of,
    response_logprobs,
    rollout_metrics,
)


@dataclass
class RLOOConfig(RunConfig):
    run_dir: str = "runs/rloo"
    """Where metrics.csv, TensorBoard events and checkpoints go."""
    rloo_k: int = 4
    """Responses per prompt (num_envs must be a multiple of it)."""
    learning_rate: float = 3e-4
    """Adam learning rate (best of 2e-5, 1e-4, 3e-4, 1e-3 on seed 0 at 20k env steps)."""
    kl_coef: float = 0.05
    """beta: return = score - beta * KL(policy || reference) of the response."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""


def leave_one_out_advantages(returns: torch.Tensor, k: int) -> torch.Tensor:
    """returns (N,) laid out as N/k groups of k consecutive responses to one prompt.
    A_i = R_i - mean_{j != i} R_j  within each group. -> (N,)"""
    grouped = returns.view(-1, k)  # (G, k)
    others_mean = (grouped.sum(1, keepdim=True) - grouped) / (k - 1)  # (G, k)
    return (grouped - others_mean).view(-1)


def train(cfg: RLOOConfig) -> dict:
    if cfg.rloo_k < 2 or cfg.num_envs % cfg.rloo_k:
        raise ValueError(f"rloo_k={cfg.rloo_k} must be >= 2 and divide num_envs={cfg.num_envs}")
    s = setup(cfg)
    policy = trainable_copy(s.reference)
    # fused: one kernel updates every tensor (a for-loop Adam costs ~5x more per step here)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=True)

    def iteration(it: int, progress: float) -> dict:
        prompts = s.sample_prompts(cfg.num_envs, group_size=cfg.rloo_k)
        ro = collect_rollout(s.envs, policy, prompts, max_new_tokens=cfg.max_new_tokens,
                             temperature=cfg.temperature, generator=s.generator,
                             pad_id=s.tokenizer.pad_id)
        mask = ro.response_mask.float()  # (N, T)
        logp_ref = response_logprobs(s.reference, ro, cfg.temperature)  # (N, T)
        logp = logprobs_of(forward_responses(policy, ro), ro.response_ids, cfg.temperature)
        seq_kl = (kl_k1(logp.detach(), logp_ref) * mask).sum(1)  # (N,)
        returns = ro.scores - cfg.kl_coef * seq_kl  # (N,)
        advantages = leave_one_out_advantages(returns, cfg.rloo_k)
        loss = sequence_policy_gradient_loss(logp, advantages, mask)
        check_finite(loss, it)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        return {**rollout_metrics(ro, seq_kl), "losses/policy_loss": loss.item(),
                "objective/rlhf_reward": returns.mean().item()}

    return run_loop(Run(cfg, policy, s.reference, {"policy": policy}, optimizer, s.envs,
                        s.tokenizer.pad_id, iteration,
                        lambda: rng_states(s), lambda st: set_rng_states(s, st), s.generator),
                    "rloo")
