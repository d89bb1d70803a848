"""REINFORCE with a baseline, on whole responses (Williams 1992; Ahmadian et al. 2024).

Each response is one action in a bandit: its return is the reward-model score minus
beta times its KL to the reference (summed k1 over its tokens). The baseline is a moving
average of past returns, so the advantage says "better or worse than usual". One
gradient step per rollout of the score-function estimator  -A * sum_t log pi(a_t|s_t).
No critic, no clipping: the simplest policy gradient that works here.
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
class ReinforceConfig(RunConfig):
    run_dir: str = "runs/reinforce"
    """Where metrics.csv, TensorBoard events and checkpoints go."""
    learning_rate: float = 3e-4
    """Adam learning rate (best of 2e-5, 1e-4, 3e-4, 1e-3 on seed 0 at 20k env steps)."""
    kl_coef: float = 0.05
    """beta: return = score - beta * KL(policy || reference) of the response."""
    baseline_decay: float = 0.9
    """Moving-average decay of the baseline (0: the current batch mean)."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""


def train(cfg: ReinforceConfig) -> dict:
    s = setup(cfg)
    policy = trainable_copy(s.reference)
    # fused: one kernel updates every tensor (a for-loop Adam costs ~5x more per step here)
    optimizer = torch.optim.Adam(policy.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=True)
    baseline = {"value": None}

    def iteration(it: int, progress: float) -> dict:
        ro = collect_rollout(s.envs, policy, s.sample_prompts(cfg.num_envs),
                             max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                             generator=s.generator, pad_id=s.tokenizer.pad_id)
        mask = ro.response_mask.float()  # (N, T)
        logp_ref = response_logprobs(s.reference, ro, cfg.temperature)  # (N, T)
        logp = logprobs_of(forward_responses(policy, ro), ro.response_ids, cfg.temperature)
        seq_kl = (kl_k1(logp.detach(), logp_ref) * mask).sum(1)  # (N,)
        returns = ro.scores - cfg.kl_coef * seq_kl  # (N,)
        batch_mean = returns.mean().item()
        if baseline["value"] is None:
            baseline["value"] = batch_mean
        advantages = returns - baseline["value"]
        loss = sequence_policy_gradient_loss(logp, advantages, mask)
        check_finite(loss, it)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
        optimizer.step()
        d = cfg.baseline_decay
        baseline["value"] = d * baseline["value"] + (1 - d) * batch_mean
        return {**rollout_metrics(ro, seq_kl), "losses/policy_loss": loss.item(),
                "objective/rlhf_reward": batch_mean, "objective/baseline": baseline["value"]}

    return run_loop(Run(cfg, policy, s.reference, {"policy": policy}, optimizer, s.envs,
                        s.tokenizer.pad_id, iteration,
                        lambda: {**rng_states(s), "baseline": baseline["value"]},
                        lambda st: (set_rng_states(s, st), baseline.update(value=st["baseline"])),
                        s.generator), "reinforce")
