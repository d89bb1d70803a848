"""LM-PPO: token-level PPO with a value-critic head and KL-shaped rewards (InstructGPT).

One iteration:
  1. rollout   - the policy writes one response per env of the TextGen-v0 vector env,
                 decoding on its KV cache; the env scores each finished response with the
                 learned reward model.
  2. ref       - one forward of the frozen reference (SFT) policy over the whole batch
                 gives log pi_ref of every response token.
  3. rewards   - per token: -beta * KL estimate (k1 or k3) of (logp - logp_ref); the
                 reward-model score is added on the last real token. beta is fixed or
                 adapted towards a KL target (Ziegler et al. 2019).
  4. GAE       - gamma 1, lambda 0.95 by default, over the response tokens; advantages
                 whitened over the batch.
  5. update    - epochs x minibatches of the clipped surrogate, clipped value loss and an
                 entropy bonus (+ optional PPO-ptx pretraining loss); grad-norm clip, LR
                 annealing, early stop when approx-KL exceeds `target_kl`.

Log-probs are always taken under the sampling temperature, so the ratio pi/pi_old and the
KL to the reference compare the same distributions the samples came from.

Run it: `python scripts/train_ppo.py --help`.
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agents.common import (
    Run,
    RunConfig,
    Setup,
    check_finite,
    rng_states,
    run_loop,
    set_rng_states,
    setup,
)
from agents.core import (
    AdaptiveKLController,
    FixedKLController,
    compute_gae,
    entropy_from_logits,
    explained_variance,
    kl_k1,
    kl_k3,
    masked_mean,
    masked_whiten,
    policy_loss_clipped,
    value_loss_clipped,
)
from agents.rollout import (
    Rollout,
    collect_rollout,
    forward_responses,
    logprobs_of,
    response_logprobs,
    rollout_metrics,
)
from textenv.lm import lm_loss, make_pretrain_batch
from textenv.model import GPT


@dataclass
class PPOConfig(RunConfig):
    run_dir: str = "runs/ppo"
    """Where metrics.csv, TensorBoard events and checkpoints go."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of responses cut off without EOS (0: off)."""
    # --- KL to the reference -------------------------------------------------------------
    init_kl_coef: float = 0.05
    """Initial beta of the per-token penalty -beta * KL."""
    adaptive_kl: bool = True
    """Adapt beta towards `kl_target` (Ziegler et al. 2019); else keep it fixed."""
    kl_target: float = 4.0
    """Target sequence KL (nats) for the adaptive controller."""
    kl_horizon: int = 10_000
    """Horizon of the adaptive controller, in responses."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: "k1" (logp - logp_ref) or "k3"."""
    # --- PPO -----------------------------------------------------------------------------
    learning_rate: float = 1e-4
    """Adam learning rate (policy and value head)."""
    anneal_lr: bool = True
    """Linearly anneal the learning rate to 0 over the budget."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per pass."""
    gamma: float = 1.0
    """Discount (1: the episode is one response)."""
    gae_lambda: float = 0.95
    """GAE lambda."""
    clip_coef: float = 0.2
    """Policy ratio clip."""
    clip_vloss: bool = True
    """Clip the value loss around the old values."""
    vf_clip: float = 0.2
    """Value clip range."""
    vf_coef: float = 0.5
    """Value loss coefficient."""
    ent_coef: float = 0.0
    """Entropy bonus coefficient."""
    max_grad_norm: float = 1.0
    """Gradient norm clip."""
    target_kl: float | None = 0.05
    """Stop the epochs of an iteration early when approx-KL exceeds this (None: never)."""
    whiten_rewards: bool = False
    """Whiten the per-token rewards over the batch before GAE."""
    separate_critic: bool = False
    """Give the critic its own transformer trunk instead of sharing the policy's."""
    ptx_coef: float = 0.0
    """PPO-ptx: weight of the pretraining LM loss on corpus documents (0: off)."""
    ptx_batch_size: int = 32
    """Corpus documents per ptx minibatch."""


class ActorCritic(nn.Module):
    """The policy's transformer with an LM head (actor) and a value head (critic).

    Initialised from the SFT policy. The value head starts at zero, so the first
    advantages are the raw returns; dropout stays off (RL needs pi and pi_old to agree).
    """

    def __init__(self, sft: GPT, separate_critic: bool = False):
        super().__init__()
        self.lm = copy.deepcopy(sft).requires_grad_(True)
        self.critic = copy.deepcopy(sft).requires_grad_(True) if separate_critic else None
        self.value_head = nn.Linear(sft.config.n_embd, 1)
        nn.init.zeros_(self.value_head.weight)
        nn.init.zeros_(self.value_head.bias)

    def forward(self, input_ids, attention_mask):
        """-> logits (B, T, V), values (B, T): V(s_t) read where logits predict token t+1."""
        hidden = self.lm.trunk(input_ids, attention_mask)  # (B, T, C)
        logits = self.lm.lm_head(hidden)  # (B, T, V)
        if self.critic is not None:
            hidden = self.critic.trunk(input_ids, attention_mask)
        return logits, self.value_head(hidden).squeeze(-1)

    def get_value(self, input_ids, attention_mask):
        return self(input_ids, attention_mask)[1]

    def get_action_and_value(self, input_ids, attention_mask, temperature=1.0, action=None):
        """CleanRL's interface at the last position: action, logprob, entropy, value."""
        logits, values = self(input_ids, attention_mask)
        logits = logits[:, -1] / temperature  # (B, V)
        dist = torch.distributions.Categorical(logits=logits)
        action = dist.sample() if action is None else action
        return action, dist.log_prob(action), dist.entropy(), values[:, -1]


def per_token_rewards(scores, logp, logp_ref, mask, beta: float, estimator: str):
    """-beta * KL per token, plus the score on each response's last real token. (N, T)."""
    kl = (kl_k1 if estimator == "k1" else kl_k3)(logp, logp_ref) * mask  # (N, T)
    rewards = -beta * kl
    last = mask.long().cumsum(1).argmax(1)  # (N,) index of the last real token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


def make_ppo(cfg: PPOConfig):
    """Build what a PPO run needs: (setup, agent, optimizer, KL controller, ptx documents or
    None). train() uses it, and so does the benchmark, which times single iterations."""
    s = setup(cfg)
    agent = ActorCritic(s.reference, cfg.separate_critic)
    # fused: one kernel updates every tensor (a for-loop Adam costs ~5x more per step here)
    optimizer = torch.optim.Adam(agent.parameters(), lr=cfg.learning_rate, eps=1e-5, fused=True)
    kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
              if cfg.adaptive_kl else FixedKLController(cfg.init_kl_coef))
    ptx_docs = None
    if cfg.ptx_coef > 0:  # PPO-ptx: keep the pretraining distribution in view
        corpus = s.task.corpus(5000, np.random.default_rng(cfg.seed + 7))
        ptx_docs = [[s.tokenizer.bos_id] + s.tokenizer.encode(d) for d in corpus]
    return s, agent, optimizer, kl_ctl, ptx_docs


def train(cfg: PPOConfig) -> dict:
    """Train LM-PPO on TextGen-v0; returns the final evaluation and the metric history."""
    s, agent, optimizer, kl_ctl, ptx_docs = make_ppo(cfg)

    def iteration(it: int, progress: float) -> dict:
        return ppo_iteration(agent, optimizer, kl_ctl, s, cfg, it, progress, ptx_docs)

    def get_state() -> dict:
        return {"kl_ctl": kl_ctl.state_dict(), **rng_states(s)}

    def set_state(state: dict) -> None:
        kl_ctl.load_state_dict(state["kl_ctl"])
        set_rng_states(s, state)

    result = run_loop(Run(cfg, agent.lm, s.reference, {"agent": agent}, optimizer, s.envs,
                          s.tokenizer.pad_id, iteration,
                          get_state, set_state, s.generator), "ppo")
    result["agent"] = agent
    return result


def ppo_iteration(agent: ActorCritic, optimizer, kl_ctl, s: Setup, cfg: PPOConfig,
                  iteration: int, progress: float, ptx_docs) -> dict:
    """One rollout + one PPO update. Returns this iteration's metrics."""
    timing = {}
    if cfg.anneal_lr:
        optimizer.param_groups[0]["lr"] = (1.0 - progress) * cfg.learning_rate

    # 1. rollout: the policy decodes on its KV cache; the env scores finished responses.
    ro: Rollout = collect_rollout(s.envs, agent.lm, s.sample_prompts(cfg.num_envs),
                                  max_new_tokens=cfg.max_new_tokens,
                                  temperature=cfg.temperature, generator=s.generator,
                                  pad_id=s.tokenizer.pad_id)
    timing["rollout"] = ro.seconds
    mask = ro.response_mask.float()  # (N, T)
    scores = ro.scores - cfg.missing_eos_penalty * (~ro.eos).float()

    # 2. reference log-probs and the policy's own log-probs/values, one forward each.
    t0 = time.perf_counter()
    logp_ref = response_logprobs(s.reference, ro, cfg.temperature)  # (N, T)
    timing["reference"] = time.perf_counter() - t0
    t0 = time.perf_counter()
    with torch.no_grad():
        logits, old_values = forward_responses(agent, ro)  # (N, T, V), (N, T)
        old_logp = logprobs_of(logits, ro.response_ids, cfg.temperature) * mask  # (N, T)
        old_values = old_values * mask

    # 3. KL-shaped per-token rewards, 4. GAE.
    rewards, kl = per_token_rewards(scores, old_logp, logp_ref, mask, kl_ctl.value,
                                    cfg.kl_estimator)
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = compute_gae(rewards, old_values, mask, cfg.gamma, cfg.gae_lambda)
    advantages = masked_whiten(advantages, mask)
    timing["old_logprobs"] = time.perf_counter() - t0  # one no-grad forward, rewards, GAE

    # 5. PPO update: epochs x minibatches over responses.
    t0 = time.perf_counter()
    n = cfg.num_envs
    mb_size = max(1, n // cfg.num_minibatches)
    stats: dict[str, list[float]] = {k: [] for k in
                                     ("pg", "vf", "ent", "approx_kl", "clipfrac", "ptx")}
    stop = False
    for _epoch in range(cfg.update_epochs):
        order = torch.randperm(n, generator=s.generator)
        for start in range(0, n, mb_size):
            mb = order[start:start + mb_size]
            m = mask[mb]
            logits, new_values = forward_responses(agent, ro, mb)  # (b, T, V), (b, T)
            new_logp = logprobs_of(logits, ro.response_ids[mb], cfg.temperature)
            pg_loss, pg_stats = policy_loss_clipped(new_logp, old_logp[mb], advantages[mb], m,
                                                    cfg.clip_coef)
            vf_loss = value_loss_clipped(new_values, old_values[mb], returns[mb], m,
                                         cfg.vf_clip if cfg.clip_vloss else None)
            entropy = masked_mean(entropy_from_logits(logits / cfg.temperature), m)
            loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
            if ptx_docs is not None:
                idx = torch.randint(len(ptx_docs), (cfg.ptx_batch_size,), generator=s.generator)
                b = make_pretrain_batch([ptx_docs[i] for i in idx], s.tokenizer.pad_id)
                ptx = lm_loss(agent.lm, b.input_ids, b.attention_mask, b.loss_mask)
                loss = loss + cfg.ptx_coef * ptx
                stats["ptx"].append(ptx.item())
            check_finite(loss, iteration)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            nn.utils.clip_grad_norm_(agent.parameters(), cfg.max_grad_norm)
            optimizer.step()
            stats["pg"].append(pg_loss.item())
            stats["vf"].append(vf_loss.item())
            stats["ent"].append(entropy.item())
            stats["approx_kl"].append(pg_stats["approx_kl"])
            stats["clipfrac"].append(pg_stats["clipfrac"])
            if cfg.target_kl is not None and pg_stats["approx_kl"] > cfg.target_kl:
                stop = True
                break
        if stop:
            break
    timing["update"] = time.perf_counter() - t0

    metrics = rollout_metrics(ro, (kl_k1(old_logp, logp_ref) * mask).sum(1))
    beta = kl_ctl.value
    kl_ctl.update(metrics["objective/kl"], n)
    mean = lambda xs: float(np.mean(xs)) if xs else float("nan")  # noqa: E731
    metrics.update({
        "objective/kl_coef": beta,
        "objective/rlhf_reward": (scores - beta * kl.sum(1)).mean().item(),
        "objective/entropy": mean(stats["ent"]),
        "losses/policy_loss": mean(stats["pg"]),
        "losses/value_loss": mean(stats["vf"]),
        "losses/approx_kl": mean(stats["approx_kl"]),
        "losses/clipfrac": mean(stats["clipfrac"]),
        "losses/ptx_loss": mean(stats["ptx"]),
        "losses/explained_variance": explained_variance(old_values, returns, mask.bool()),
        "charts/learning_rate": optimizer.param_groups[0]["lr"],
        "charts/tokens_per_second": ro.num_tokens / sum(timing.values()),
        "time/reference": timing["reference"],
        "time/old_logprobs": timing["old_logprobs"],
        "time/update": timing["update"],
    })
    return metrics
