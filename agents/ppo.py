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

Run it: `textenv ppo --help` (or `python scripts/train_ppo.py --help`).
"""

from __future__ import annotations

import copy
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from agents import distributed
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
from agents.training import RunConfig, Timer, adam, check_finite, run, setup, update_model
from textenv.lm import lm_loss, make_pretrain_batch
from textenv.model import GPT


@dataclass
class PPOConfig(RunConfig):
    run_dir: str = "runs/ppo"
    """Where metrics.csv, TensorBoard events and checkpoints go."""
    missing_eos_penalty: float = 0.0
    """Subtracted from the score of responses cut off without EOS (0: off)."""
    # --- KL to the reference -------------------------------------------------------------
    init_kl_coef: float = 0.1
    """Initial beta of the per-token penalty -beta * KL (tuned: docs/results.md#tuned-defaults)."""
    adaptive_kl: bool = True
    """Adapt beta towards `kl_target` (Ziegler et al. 2019); else keep it fixed."""
    kl_target: float = 4.0
    """Target sequence KL (nats) for the adaptive controller."""
    kl_horizon: int = 10_000
    """Horizon of the adaptive controller, in responses."""
    kl_estimator: str = "k1"
    """Per-token KL estimator in the reward: "k1" (logp - logp_ref) or "k3"."""
    # --- PPO -----------------------------------------------------------------------------
    learning_rate: float = 3e-4
    """Adam learning rate (policy and value head)."""
    anneal_lr: bool = True
    """Linearly anneal the learning rate to 0 over the budget."""
    anneal_env_steps: int = 0
    """The budget the learning rate anneals over, in env steps (0: total_env_steps). A
    run resumed with a larger total_env_steps (iterated RLHF's rounds) keeps one
    schedule when this is set to the final budget."""
    update_epochs: int = 4
    """Passes over each rollout."""
    num_minibatches: int = 4
    """Minibatches per pass."""
    trim_padding: bool = True
    """Run each minibatch's forward on its own longest prompt and response only (exact:
    positions count real tokens); False runs the rollout's whole width."""
    bucket_by_length: bool = False
    """Make minibatches of rows of similar length (sorted by length, ties in random order;
    the minibatch order shuffled every epoch), so that trimming removes more padding: a
    1.1-1.2x faster update, learning unchanged within noise (docs/performance.md)."""
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


# ---- the phases of one iteration -------------------------------------------------------------
def per_token_rewards(scores, logp, logp_ref, mask, beta: float, estimator: str):
    """-beta * KL per token, plus the score on each response's last real token. (N, T)."""
    kl = (kl_k1 if estimator == "k1" else kl_k3)(logp, logp_ref) * mask  # (N, T)
    rewards = -beta * kl
    last = mask.long().cumsum(1).argmax(1)  # (N,) index of the last real token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl


@torch.no_grad()
def old_logprobs_and_values(agent: ActorCritic, ro: Rollout, mask, temperature: float):
    """pi_old's log-probs of the sampled tokens and V(s_t), one no-grad forward. (N, T) each."""
    logits, values = forward_responses(agent, ro)  # (N, T, V), (N, T)
    return logprobs_of(logits, ro.response_ids, temperature) * mask, values * mask


def advantages_and_returns(rewards, values, mask, cfg: PPOConfig):
    """GAE over the response tokens; advantages whitened over the batch. (N, T) each."""
    if cfg.whiten_rewards:
        rewards = masked_whiten(rewards, mask, shift_mean=False)
    advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.gae_lambda)
    return masked_whiten(advantages, mask), returns


def minibatches(ro: Rollout, mb_size: int, generator: torch.Generator,
                by_length: bool = False) -> list[torch.Tensor]:
    """One epoch's minibatches: row indices (b,) each, every row once. Shuffled; or, with
    `by_length`, rows sorted by length (prompt + response, ties in random order), cut into
    minibatches, and the minibatch order shuffled."""
    n = ro.response_ids.shape[0]
    order = torch.randperm(n, generator=generator)  # (N,)
    if not by_length:
        return list(order.split(mb_size))
    lengths = ro.prompt_mask.sum(1) + ro.response_mask.sum(1)  # (N,)
    order = order[lengths[order].argsort(stable=True)]  # by length; ties stay shuffled
    chunks = order.split(mb_size)
    return [chunks[i] for i in torch.randperm(len(chunks), generator=generator)]


def ppo_update(agent: ActorCritic, optimizer, ro: Rollout, mask, old_logp, old_values,
               advantages, returns, cfg: PPOConfig, generator: torch.Generator,
               iteration: int, ptx_docs, pad_id: int) -> dict[str, list[float]]:
    """Epochs x minibatches of the clipped surrogate + clipped value loss - entropy bonus
    (+ PPO-ptx); early stop when approx-KL exceeds target_kl. Returns per-minibatch stats.
    `agent` may be the compiled view of the ActorCritic (`update_model`)."""
    n = mask.shape[0]
    mb_size = max(1, n // cfg.num_minibatches)
    stats: dict[str, list[float]] = {k: [] for k in
                                     ("pg", "vf", "ent", "approx_kl", "clipfrac", "ptx")}
    for _epoch in range(cfg.update_epochs):
        for mb in minibatches(ro, mb_size, generator, cfg.bucket_by_length):
            m = mask[mb]
            logits, new_values = forward_responses(  # (b, T, V), (b, T), float32
                agent, ro, mb, trim=cfg.trim_padding, bf16=cfg.autocast_bf16)
            new_logp = logprobs_of(logits, ro.response_ids[mb], cfg.temperature)
            pg_loss, pg_stats = policy_loss_clipped(new_logp, old_logp[mb], advantages[mb], m,
                                                    cfg.clip_coef)
            vf_loss = value_loss_clipped(new_values, old_values[mb], returns[mb], m,
                                         cfg.vf_clip if cfg.clip_vloss else None)
            # The entropy joins the graph only when it is in the loss (else: logged only).
            with torch.set_grad_enabled(torch.is_grad_enabled() and cfg.ent_coef != 0):
                entropy = masked_mean(entropy_from_logits(logits / cfg.temperature), m)
            loss = pg_loss + cfg.vf_coef * vf_loss - cfg.ent_coef * entropy
            if ptx_docs is not None:  # PPO-ptx: keep the pretraining distribution in view
                idx = torch.randint(len(ptx_docs), (cfg.ptx_batch_size,), generator=generator)
                b = make_pretrain_batch([ptx_docs[i] for i in idx], pad_id)
                dev = mask.device
                ptx = lm_loss(agent.lm, b.input_ids.to(dev), b.attention_mask.to(dev),
                              b.loss_mask.to(dev))
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
            if cfg.target_kl is not None and (  # mean over processes: all stop alike
                    distributed.mean(pg_stats["approx_kl"]) > cfg.target_kl):
                return stats
    return stats


def _mean(xs: list[float]) -> float:
    return float(np.mean(xs)) if xs else float("nan")


# ---- the algorithm ----------------------------------------------------------------------------
class PPO:
    """LM-PPO as the training loop (`agents.training.run`) drives it."""

    def __init__(self, cfg: PPOConfig):
        if cfg.anneal_env_steps and not cfg.total_env_steps <= cfg.anneal_env_steps:
            raise ValueError(f"anneal_env_steps must be 0 or >= total_env_steps "
                             f"({cfg.total_env_steps}), got {cfg.anneal_env_steps}")
        self.cfg = cfg
        self.setup = s = setup(cfg)
        self.agent = ActorCritic(s.reference, cfg.separate_critic).to(s.device)
        self.policy = self.agent.lm
        self.modules = {"agent": self.agent}
        self.update_agent = update_model(self.agent, cfg)  # compiled with --compile
        self.optimizer = adam(self.agent.parameters(), cfg.learning_rate)
        self.kl_ctl = (AdaptiveKLController(cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
                       if cfg.adaptive_kl else FixedKLController(cfg.init_kl_coef))
        self.ptx_docs = None
        if cfg.ptx_coef > 0:
            corpus = s.task.corpus(5000, np.random.default_rng(cfg.seed + 7))
            self.ptx_docs = [[s.tokenizer.bos_id] + s.tokenizer.encode(d) for d in corpus]

    def iteration(self, iteration: int, progress: float, timer: Timer) -> dict[str, float]:
        cfg, s, agent = self.cfg, self.setup, self.agent
        if cfg.anneal_lr:  # progress: the fraction of total_env_steps spent so far
            done = progress * cfg.total_env_steps / (cfg.anneal_env_steps or cfg.total_env_steps)
            self.optimizer.param_groups[0]["lr"] = (1.0 - done) * cfg.learning_rate

        # 1. rollout: the policy decodes on its KV cache; the env scores finished responses.
        with timer("rollout"):
            ro = collect_rollout(s.envs, agent.lm, s.sample_prompts(cfg.num_envs),
                                 max_new_tokens=cfg.max_new_tokens, temperature=cfg.temperature,
                                 generator=s.generator, pad_id=s.tokenizer.pad_id)
        mask = ro.action_mask.float()  # (N, T) the agent's tokens (its actions)
        scores = ro.scores * s.reward_scale  # (N,) on the scale where beta is defined
        scores = scores - cfg.missing_eos_penalty * (~ro.eos).float()  # (N,)

        # 2. log-probs under the reference and under pi_old, values; one forward each.
        with timer("reference"):
            logp_ref = response_logprobs(s.reference, ro, cfg.temperature)  # (N, T)
        with timer("old_logprobs"):
            old_logp, old_values = old_logprobs_and_values(agent, ro, mask, cfg.temperature)

        # 3. KL-shaped per-token rewards, 4. GAE.
        with timer("advantages"):
            rewards, kl = per_token_rewards(scores, old_logp, logp_ref, mask,
                                            self.kl_ctl.value, cfg.kl_estimator)
            advantages, returns = advantages_and_returns(rewards, old_values, mask, cfg)

        # 5. the PPO update.
        with timer("update"):
            stats = ppo_update(self.update_agent, self.optimizer, ro, mask, old_logp, old_values,
                               advantages, returns, cfg, s.generator, iteration,
                               self.ptx_docs, s.tokenizer.pad_id)

        # 6. metrics (CleanRL/TRL names), then adapt beta to the measured KL.
        metrics = rollout_metrics(ro, (kl_k1(old_logp, logp_ref) * mask).sum(1))
        beta = self.kl_ctl.value
        self.kl_ctl.update(distributed.mean(metrics["objective/kl"]), cfg.num_envs)
        metrics.update({
            "objective/kl_coef": beta,
            "objective/rlhf_reward": (scores - beta * kl.sum(1)).mean().item(),
            "objective/entropy": _mean(stats["ent"]),
            "losses/policy_loss": _mean(stats["pg"]),
            "losses/value_loss": _mean(stats["vf"]),
            "losses/approx_kl": _mean(stats["approx_kl"]),
            "losses/clipfrac": _mean(stats["clipfrac"]),
            "losses/ptx_loss": _mean(stats["ptx"]),
            "losses/explained_variance": explained_variance(old_values, returns, mask.bool()),
            "charts/learning_rate": self.optimizer.param_groups[0]["lr"],
        })
        return metrics

    def state_dict(self) -> dict:
        return {"kl_ctl": self.kl_ctl.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.kl_ctl.load_state_dict(state["kl_ctl"])


def train(cfg: PPOConfig) -> dict:
    """Train LM-PPO on TextGen-v0; returns the final evaluation and the metric history."""
    algo = PPO(cfg)
    result = run(algo, cfg, "ppo")
    result["agent"] = algo.agent
    return result
