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

from agents import distributed
from agents.core import kl_k1, sequence_policy_gradient_loss
from agents.rollout import (
    Rollout,
    collect_rollout,
    forward_responses,
    logprobs_of,
    response_logprobs,
    rollout_metrics,
)
from agents.training import (
    RunConfig,
    Timer,
    adam,
    check_finite,
    run,
    setup,
    trainable_copy,
    update_model,
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


# ---- the phases of one iteration -------------------------------------------------------------
def sequence_returns(policy, reference, ro: Rollout, kl_coef: float, temperature: float,
                     reward_scale: float = 1.0, bf16: bool = False):
    """Each response's return, scale * score - beta * KL(policy || reference) (summed k1),
    with the policy's log-probs kept for the gradient (its forward under bfloat16 autocast
    with `bf16`). -> returns (N,), logp (N, T), seq_kl (N,)."""
    mask = ro.action_mask.float()  # (N, T) the agent's tokens (its actions)
    logp_ref = response_logprobs(reference, ro, temperature)  # (N, T)
    logp = logprobs_of(forward_responses(policy, ro, bf16=bf16), ro.response_ids,
                       temperature)  # (N, T)
    seq_kl = (kl_k1(logp.detach(), logp_ref) * mask).sum(1)  # (N,)
    return ro.scores * reward_scale - kl_coef * seq_kl, logp, seq_kl


def policy_gradient_step(policy, optimizer, logp, advantages, mask, max_grad_norm: float,
                         iteration: int) -> torch.Tensor:
    """One step of the score-function estimator  -A * sum_t log pi(a_t|s_t)."""
    loss = sequence_policy_gradient_loss(logp, advantages, mask)
    check_finite(loss, iteration)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    nn.utils.clip_grad_norm_(policy.parameters(), max_grad_norm)
    optimizer.step()
    return loss


# ---- the algorithm ----------------------------------------------------------------------------
class Reinforce:
    def __init__(self, cfg: ReinforceConfig):
        self.cfg = cfg
        self.setup = s = setup(cfg)
        self.policy = trainable_copy(s.reference)
        self.modules = {"policy": self.policy}
        self.update_policy = update_model(self.policy, cfg)  # compiled with --compile
        self.optimizer = adam(self.policy.parameters(), cfg.learning_rate)
        self.baseline: float | None = None  # moving average of past returns

    def iteration(self, iteration: int, progress: float, timer: Timer) -> dict[str, float]:
        cfg, s = self.cfg, self.setup
        with timer("rollout"):
            ro = collect_rollout(s.envs, self.policy, s.sample_prompts(cfg.num_envs),
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 generator=s.generator, pad_id=s.tokenizer.pad_id)
        with timer("update"):
            returns, logp, seq_kl = sequence_returns(self.update_policy, s.reference, ro,
                                                     cfg.kl_coef, cfg.temperature,
                                                     s.reward_scale, cfg.autocast_bf16)
            batch_mean = distributed.mean(returns.mean().item())  # over every process
            if self.baseline is None:
                self.baseline = batch_mean
            advantages = returns - self.baseline  # (N,) better or worse than usual
            loss = policy_gradient_step(self.policy, self.optimizer, logp, advantages,
                                        ro.action_mask.float(), cfg.max_grad_norm, iteration)
        d = cfg.baseline_decay
        self.baseline = d * self.baseline + (1 - d) * batch_mean
        return {**rollout_metrics(ro, seq_kl), "losses/policy_loss": loss.item(),
                "objective/rlhf_reward": batch_mean, "objective/baseline": self.baseline}

    def state_dict(self) -> dict:
        return {"baseline": self.baseline}

    def load_state_dict(self, state: dict) -> None:
        self.baseline = state["baseline"]


def train(cfg: ReinforceConfig) -> dict:
    return run(Reinforce(cfg), cfg, "reinforce")
