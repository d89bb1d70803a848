"""RLOO: REINFORCE Leave-One-Out (Kool et al. 2019; Ahmadian et al. 2024).

Sample k responses per prompt. Each response's baseline is the mean return of the other
k-1 responses to the same prompt: an unbiased, per-prompt baseline with no critic and no
moving average. Return = reward-model score - beta * KL to the reference (sequence k1).
One gradient step of -A * sum_t log pi per rollout.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from agents.reinforce import policy_gradient_step, sequence_returns
from agents.rollout import collect_rollout, rollout_metrics
from agents.training import RunConfig, Timer, adam, run, setup, trainable_copy, update_model


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


class RLOO:
    def __init__(self, cfg: RLOOConfig):
        if cfg.rloo_k < 2 or cfg.num_envs % cfg.rloo_k:
            raise ValueError(f"rloo_k={cfg.rloo_k} must be >= 2 and divide "
                             f"num_envs={cfg.num_envs}")
        self.cfg = cfg
        self.setup = s = setup(cfg)
        self.policy = trainable_copy(s.reference)
        self.modules = {"policy": self.policy}
        self.update_policy = update_model(self.policy, cfg)  # compiled with --compile
        self.optimizer = adam(self.policy.parameters(), cfg.learning_rate)

    def iteration(self, iteration: int, progress: float, timer: Timer) -> dict[str, float]:
        cfg, s = self.cfg, self.setup
        with timer("rollout"):  # k responses to each prompt, side by side
            prompts = s.sample_prompts(cfg.num_envs, group_size=cfg.rloo_k)
            ro = collect_rollout(s.envs, self.policy, prompts, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, generator=s.generator,
                                 pad_id=s.tokenizer.pad_id)
        with timer("update"):
            returns, logp, seq_kl = sequence_returns(self.update_policy, s.reference, ro,
                                                     cfg.kl_coef, cfg.temperature,
                                                     s.reward_scale, cfg.autocast_bf16)
            advantages = leave_one_out_advantages(returns, cfg.rloo_k)
            loss = policy_gradient_step(self.policy, self.optimizer, logp, advantages,
                                        ro.action_mask.float(), cfg.max_grad_norm, iteration)
        return {**rollout_metrics(ro, seq_kl), "losses/policy_loss": loss.item(),
                "objective/rlhf_reward": returns.mean().item()}

    def state_dict(self) -> dict:
        return {}  # no state of its own beyond the weights, optimizer and RNGs

    def load_state_dict(self, state: dict) -> None:
        pass


def train(cfg: RLOOConfig) -> dict:
    return run(RLOO(cfg), cfg, "rloo")
