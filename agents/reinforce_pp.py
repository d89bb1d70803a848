"""REINFORCE++ (Hu 2025, "REINFORCE++: A Simple and Efficient Approach for Aligning Large
Language Models"): PPO's stability tricks without its critic.

Each token's reward is -beta * (log pi - log pi_ref) (the per-token KL penalty, k1), with
the reward-model score added on the response's last token; a token's advantage is the sum
of the rewards from it to the end of its response (gamma 1, no value function), whitened
over every token of the batch (a global baseline, not a per-prompt one). The update is
PPO's clipped surrogate over a few epochs of minibatches.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from agents.core import compute_gae, kl_k1, masked_whiten, policy_loss_clipped
from agents.ppo import per_token_rewards
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
class ReinforcePPConfig(RunConfig):
    run_dir: str = "runs/reinforce_pp"
    """Where metrics.csv, TensorBoard events and checkpoints go."""
    learning_rate: float = 3e-4
    """Adam learning rate."""
    kl_coef: float = 0.05
    """beta of the per-token KL penalty in the reward."""
    clip_coef: float = 0.2
    """Policy ratio clip."""
    update_epochs: int = 2
    """Passes over each rollout."""
    num_minibatches: int = 2
    """Minibatches per pass."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""


# ---- the phases of one iteration -------------------------------------------------------------
def token_advantages(scores, old_logp, logp_ref, mask, beta: float):
    """Returns-to-go of the KL-shaped per-token rewards, whitened over the batch's tokens.
    -> advantages (N, T), per-token KL (N, T)."""
    rewards, kl = per_token_rewards(scores, old_logp, logp_ref, mask, beta, "k1")  # (N, T)
    zero_values = torch.zeros_like(rewards)  # no critic: GAE with V = 0, lambda = 1
    returns_to_go, _ = compute_gae(rewards, zero_values, mask, gamma=1.0, lam=1.0)
    return masked_whiten(returns_to_go, mask), kl


def clipped_update(policy, optimizer, ro: Rollout, mask, old_logp, advantages,
                   cfg: ReinforcePPConfig, generator: torch.Generator, iteration: int) -> dict:
    """Epochs x minibatches of the clipped surrogate. Returns its mean and approx-KL."""
    n = mask.shape[0]
    mb_size = max(1, n // cfg.num_minibatches)
    losses, approx_kls = [], []
    for _ in range(cfg.update_epochs):
        for mb in torch.randperm(n, generator=generator).split(mb_size):
            logp = logprobs_of(forward_responses(policy, ro, mb, bf16=cfg.autocast_bf16),
                               ro.response_ids[mb], cfg.temperature)  # (b, T)
            loss, stats = policy_loss_clipped(logp, old_logp[mb], advantages[mb], mask[mb],
                                              cfg.clip_coef)
            check_finite(loss, iteration)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            losses.append(loss.item())
            approx_kls.append(stats["approx_kl"])
    return {"losses/policy_loss": sum(losses) / len(losses),
            "losses/approx_kl": sum(approx_kls) / len(approx_kls)}


# ---- the algorithm ----------------------------------------------------------------------------
class ReinforcePP:
    def __init__(self, cfg: ReinforcePPConfig):
        self.cfg = cfg
        self.setup = s = setup(cfg)
        self.policy = trainable_copy(s.reference)
        self.modules = {"policy": self.policy}
        self.update_policy = update_model(self.policy, cfg)  # compiled with --compile
        self.optimizer = adam(self.policy.parameters(), cfg.learning_rate)

    def iteration(self, iteration: int, progress: float, timer: Timer) -> dict[str, float]:
        cfg, s = self.cfg, self.setup
        with timer("rollout"):
            ro = collect_rollout(s.envs, self.policy, s.sample_prompts(cfg.num_envs),
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 generator=s.generator, pad_id=s.tokenizer.pad_id)
        mask = ro.action_mask.float()  # (N, T) the agent's tokens (its actions)
        with timer("reference"):
            logp_ref = response_logprobs(s.reference, ro, cfg.temperature)  # (N, T)
        with timer("old_logprobs"):
            old_logp = response_logprobs(self.policy, ro, cfg.temperature)  # (N, T)
        with timer("advantages"):
            advantages, kl = token_advantages(ro.scores * s.reward_scale, old_logp, logp_ref,
                                              mask, cfg.kl_coef)
        with timer("update"):
            stats = clipped_update(self.update_policy, self.optimizer, ro, mask, old_logp,
                                   advantages, cfg, s.generator, iteration)
        seq_kl = (kl_k1(old_logp, logp_ref) * mask).sum(1)  # (N,)
        return {**rollout_metrics(ro, seq_kl), **stats}

    def state_dict(self) -> dict:
        return {}  # no state of its own beyond the weights, optimizer and RNGs

    def load_state_dict(self, state: dict) -> None:
        pass


def train(cfg: ReinforcePPConfig) -> dict:
    return run(ReinforcePP(cfg), cfg, "reinforce++")
