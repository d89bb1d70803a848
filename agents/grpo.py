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

from agents.core import aggregate_tokens, kl_k1, kl_k3, policy_loss_clipped
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
    scale_rewards: bool = True
    """Divide each group's centred rewards by the group's std (GRPO); Dr. GRPO does not."""
    loss_aggregation: str = "token_mean"
    """How token losses become one number: "token_mean" (every token of the minibatch),
    "sequence_mean" (per response, then over responses: the GRPO paper) or "constant"
    (the token sum over responses x max_new_tokens: Dr. GRPO)."""


# ---- the phases of one iteration -------------------------------------------------------------
def group_advantages(scores: torch.Tensor, group_size: int, scale: bool = True,
                     eps: float = 1e-4) -> torch.Tensor:
    """scores (N,) in groups of `group_size` consecutive responses -> R - mean of the group,
    divided by (std + eps) of the group when `scale`."""
    g = scores.view(-1, group_size)  # (G, k)
    centred = g - g.mean(1, keepdim=True)
    return (centred / (g.std(1, keepdim=True) + eps) if scale else centred).view(-1)


def grpo_update(policy, optimizer, ro: Rollout, mask, old_logp, logp_ref, adv,
                cfg: GRPOConfig, generator: torch.Generator, iteration: int) -> dict:
    """Epochs x minibatches of the clipped surrogate + beta * per-token k3 KL to the
    reference (a loss term here, not a reward penalty). Returns mean loss and KL."""
    n = mask.shape[0]
    mb_size = max(1, n // cfg.num_minibatches)
    losses, kls = [], []
    for _ in range(cfg.update_epochs):
        for mb in torch.randperm(n, generator=generator).split(mb_size):
            logp = logprobs_of(forward_responses(policy, ro, mb, bf16=cfg.autocast_bf16),
                               ro.response_ids[mb], cfg.temperature)  # (b, T)
            pg_loss, _ = policy_loss_clipped(logp, old_logp[mb], adv[mb], mask[mb],
                                             cfg.clip_coef, cfg.loss_aggregation,
                                             cfg.max_new_tokens)
            kl = aggregate_tokens(kl_k3(logp, logp_ref[mb]), mask[mb], cfg.loss_aggregation,
                                  cfg.max_new_tokens)
            loss = pg_loss + cfg.beta * kl
            check_finite(loss, iteration)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(policy.parameters(), cfg.max_grad_norm)
            optimizer.step()
            losses.append(loss.item())
            kls.append(kl.item())
    return {"losses/policy_loss": sum(losses) / len(losses),
            "objective/kl_k3_token": sum(kls) / len(kls)}


# ---- the algorithm ----------------------------------------------------------------------------
class GRPO:
    def __init__(self, cfg: GRPOConfig):
        if cfg.group_size < 2 or cfg.num_envs % cfg.group_size:
            raise ValueError(f"group_size={cfg.group_size} must be >= 2 and divide "
                             f"num_envs={cfg.num_envs}")
        self.cfg = cfg
        self.setup = s = setup(cfg)
        self.policy = trainable_copy(s.reference)
        self.modules = {"policy": self.policy}
        self.update_policy = update_model(self.policy, cfg)  # compiled with --compile
        self.optimizer = adam(self.policy.parameters(), cfg.learning_rate)

    def iteration(self, iteration: int, progress: float, timer: Timer) -> dict[str, float]:
        cfg, s = self.cfg, self.setup
        with timer("rollout"):  # a group of responses to each prompt, side by side
            prompts = s.sample_prompts(cfg.num_envs, group_size=cfg.group_size)
            ro = collect_rollout(s.envs, self.policy, prompts, max_new_tokens=cfg.max_new_tokens,
                                 temperature=cfg.temperature, generator=s.generator,
                                 pad_id=s.tokenizer.pad_id)
        mask = ro.action_mask.float()  # (N, T) the agent's tokens (its actions)
        with timer("reference"):
            logp_ref = response_logprobs(s.reference, ro, cfg.temperature)  # (N, T)
        with timer("old_logprobs"):
            old_logp = response_logprobs(self.policy, ro, cfg.temperature)  # (N, T)
        scores = ro.scores * s.reward_scale  # (N,) on the scale where beta is defined
        adv = group_advantages(scores, cfg.group_size, cfg.scale_rewards)  # (N,)
        adv = adv[:, None].expand_as(mask)  # (N, T) every token of a response gets its own
        with timer("update"):
            stats = grpo_update(self.update_policy, self.optimizer, ro, mask, old_logp,
                                logp_ref, adv, cfg, s.generator, iteration)
        seq_kl = (kl_k1(old_logp, logp_ref) * mask).sum(1)  # (N,)
        return {**rollout_metrics(ro, seq_kl), **stats}

    def state_dict(self) -> dict:
        return {}  # no state of its own beyond the weights, optimizer and RNGs

    def load_state_dict(self, state: dict) -> None:
        pass


def train(cfg: GRPOConfig) -> dict:
    return run(GRPO(cfg), cfg, type(cfg).__name__.removesuffix("Config").lower())
