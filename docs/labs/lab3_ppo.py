# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lab 3 — PPO for language models
#
# **Learning goals.** You implement the pieces of LM-PPO (InstructGPT's RL step) and put
# them together into a working training loop:
#
# 1. the per-token KL penalty that keeps the policy near the reference (SFT) model;
# 2. generalised advantage estimation (GAE) over response tokens, with a value head;
# 3. the clipped surrogate objective and the clipped value loss;
# 4. the adaptive KL coefficient $\beta$ (Ziegler et al. 2019).
#
# **Time:** about 60 minutes of work (the solution's run time: docs/labs/README.md).
#
# ## The objective
#
# RLHF maximises the reward-model score while staying close to the reference policy:
#
# $$ J(\pi) = \mathbb{E}_{x,\, y \sim \pi}\big[ R(x, y) \big]
#   - \beta\, \mathrm{KL}\big(\pi(\cdot \mid x) \,\|\, \pi_{\mathrm{ref}}(\cdot \mid x)\big). $$
#
# The KL of a response is a sum over its tokens, so it becomes a **per-token reward**; the
# score is paid on the last token $T$:
#
# $$ r_t = -\beta\,\big(\log\pi(y_t \mid s_t) - \log\pi_{\mathrm{ref}}(y_t \mid s_t)\big)
#   + [t = T]\, R(x, y). $$
#
# A **value head** $V_\phi(s_t)$ (a linear layer on the policy's transformer, initialised to
# zero) predicts the return from each token on. GAE mixes its estimates with the rewards:
#
# $$ \delta_t = r_t + \gamma V(s_{t+1}) - V(s_t), \qquad
#    \hat A_t = \delta_t + \gamma\lambda \hat A_{t+1}, \qquad \hat R_t = \hat A_t + V(s_t), $$
#
# with $V(s_{T+1}) = 0$ and $\hat A_{T+1} = 0$ (the episode ends at the last real token).
# PPO then takes several gradient steps on the same rollout with the **clipped surrogate**
# ($\rho_t = \pi_\theta(y_t \mid s_t) / \pi_{\mathrm{old}}(y_t \mid s_t)$):
#
# $$ L^{\mathrm{CLIP}} = \mathbb{E}_t\Big[\max\big(-\hat A_t\,\rho_t,\;
#    -\hat A_t\,\mathrm{clip}(\rho_t, 1-\epsilon, 1+\epsilon)\big)\Big], $$
#
# and the value head regresses $\hat R_t$ with a loss clipped around the old values. Finally
# $\beta$ adapts so that the measured KL tracks a target:
#
# $$ e = \mathrm{clip}\big(\mathrm{KL}/\mathrm{KL}_{\mathrm{target}} - 1,\, -0.2,\, 0.2\big),
#    \qquad \beta \leftarrow \beta\,(1 + e\, n / H) $$
#
# ($n$ responses in this batch, horizon $H$). Every tensor here is `(N, T)`: $N$ responses,
# $T$ response positions, with a boolean `mask` that is `True` on real tokens (responses
# have different lengths; the tail of a row is padding).

# %% tags=["setup"]
import matplotlib.pyplot as plt
import numpy as np
import torch

import textenv

torch.set_num_threads(2)


def attempt(fn, *args, **kwargs):
    """Call an exercise function; a TODO that is still open fails the check politely."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(f"{fn.__name__} is not implemented yet: replace the TODO "
                             "in its cell, run that cell, then this one again.") from None


def random_batch(seed, n=6, t=7):
    """Random per-token tensors with responses of different lengths (one of length 1)."""
    g = torch.Generator().manual_seed(seed)
    lengths = torch.tensor([t, 1, 3, t - 1, 5, 2][:n])
    mask = torch.arange(t)[None, :] < lengths[:, None]  # (N, T)
    def rand():
        return torch.randn(n, t, generator=g)
    return mask, rand, g


# %% [markdown]
# ## Exercise 1 — KL-shaped per-token rewards
#
# `scores` is `(N,)`, `logp`, `logp_ref` and `mask` are `(N, T)`. Return `(rewards, kl)`:
# `kl = (logp - logp_ref)` on real tokens (0 on padding) and the rewards $r_t$ above: the
# score is added on each row's **last real token**.

# %% tags=["exercise"]
def per_token_rewards(scores, logp, logp_ref, mask, beta):
    # BEGIN SOLUTION
    kl = (logp - logp_ref) * mask  # (N, T)
    rewards = -beta * kl
    last = mask.long().sum(1) - 1  # (N,) index of the last real token
    rewards[torch.arange(len(scores)), last] += scores
    return rewards, kl
    # END SOLUTION


# %% tags=["check"]
def check_per_token_rewards():
    from agents.ppo import per_token_rewards as reference

    mask, rand, g = random_batch(0)
    scores, logp, logp_ref = torch.randn(6, generator=g), rand(), rand()
    out = attempt(per_token_rewards, scores, logp, logp_ref, mask, 0.1)
    assert isinstance(out, tuple) and len(out) == 2, "return the pair (rewards, kl)"
    rewards, kl = out
    want_rewards, want_kl = reference(scores, logp, logp_ref, mask.float(), 0.1, "k1")
    assert torch.allclose(kl * mask, want_kl), "kl is logp - logp_ref on the real tokens"
    assert torch.allclose(rewards[~mask], torch.zeros(()), atol=1e-6), (
        "padding must get reward 0: multiply the KL by the mask")
    assert torch.allclose(rewards.sum(1), want_rewards.sum(1), atol=1e-5), (
        "each row should sum to score - beta * sum_t kl_t: did you add the score once?")
    assert torch.allclose(rewards, want_rewards, atol=1e-5), (
        "the score goes on the LAST REAL token of each row, not on the last column")
    print("✓ per_token_rewards is correct")


check_per_token_rewards()

# %% [markdown]
# ## Exercise 2 — GAE over response tokens
#
# Return `(advantages, returns)`, both `(N, T)` and 0 on padding. Loop backwards over $t$,
# treating a row's last real token as terminal. Hint: for a real token, the next state is the
# next real token of its row; at padding, carry the "next" value and advantage unchanged
# (here padding only sits at the end of a row, so setting them to 0 there works too).

# %% tags=["exercise"]
def gae(rewards, values, mask, gamma=1.0, lam=0.95):
    # BEGIN SOLUTION
    n, t = rewards.shape
    advantages = torch.zeros_like(rewards)
    next_value, next_adv = torch.zeros(n), torch.zeros(n)
    for i in reversed(range(t)):
        m = mask[:, i]
        delta = rewards[:, i] + gamma * next_value - values[:, i]
        adv = delta + gamma * lam * next_adv
        advantages[:, i] = torch.where(m, adv, torch.zeros(()))
        next_value = torch.where(m, values[:, i], next_value)
        next_adv = torch.where(m, adv, next_adv)
    returns = (advantages + values) * mask
    return advantages, returns
    # END SOLUTION


# %% tags=["check"]
def check_gae():
    from agents.core import compute_gae

    mask, rand, _ = random_batch(1)
    rewards, values = rand() * mask, rand()
    for gamma, lam in ((1.0, 0.95), (0.9, 0.5), (1.0, 1.0)):
        out = attempt(gae, rewards.clone(), values.clone(), mask, gamma, lam)
        assert isinstance(out, tuple) and len(out) == 2, "return (advantages, returns)"
        adv, ret = out
        want_adv, want_ret = compute_gae(rewards, values, mask, gamma, lam)
        if lam == 1.0 and gamma == 1.0 and not torch.allclose(adv * mask, want_adv, atol=1e-5):
            raise AssertionError("with gamma = lambda = 1 the advantage is (sum of the rewards "
                                 "from t on) - V(s_t): check the backward recursion")
        assert torch.allclose(adv * mask, want_adv, atol=1e-5), (
            f"advantages differ at gamma={gamma}, lambda={lam}: delta_t = r_t + gamma "
            "V(s_t+1) - V(s_t), with V = 0 after the last real token; A_t = delta_t + gamma "
            "lambda A_t+1")
        assert torch.allclose(adv[~mask], torch.zeros(()), atol=1e-6), "padding: advantage 0"
        assert torch.allclose(ret * mask, want_ret, atol=1e-5), "returns = advantages + values"
    print("✓ gae is correct")


check_gae()

# %% [markdown]
# ## Exercise 3 — the clipped surrogate and the clipped value loss
#
# `clipped_policy_loss` returns the scalar $L^{\mathrm{CLIP}}$, the mean over **real tokens
# only**. `clipped_value_loss` returns
# $\tfrac12\,\mathbb{E}_t\big[\max\big((V - \hat R)^2,\ (V_{\mathrm{old}} +
# \mathrm{clip}(V - V_{\mathrm{old}}, -c, c) - \hat R)^2\big)\big]$, also over real tokens.

# %% tags=["exercise"]
def clipped_policy_loss(logp_new, logp_old, advantages, mask, clip):
    # BEGIN SOLUTION
    ratio = torch.exp(logp_new - logp_old)
    loss = torch.max(-advantages * ratio, -advantages * ratio.clamp(1 - clip, 1 + clip))
    return (loss * mask).sum() / mask.sum()
    # END SOLUTION


def clipped_value_loss(values, old_values, returns, mask, clip):
    # BEGIN SOLUTION
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    loss = torch.max((values - returns) ** 2, (clipped - returns) ** 2)
    return 0.5 * (loss * mask).sum() / mask.sum()
    # END SOLUTION


# %% tags=["check"]
def check_losses():
    from agents.core import policy_loss_clipped, value_loss_clipped

    mask, rand, _ = random_batch(2)
    logp_old, adv = rand() - 2, rand()
    logp_new = (logp_old + 0.5 * rand()).requires_grad_(True)
    loss = attempt(clipped_policy_loss, logp_new, logp_old, adv, mask, 0.2)
    want, _ = policy_loss_clipped(logp_new, logp_old, adv, mask, 0.2)
    unclipped = -(adv * torch.exp(logp_new - logp_old) * mask).sum() / mask.sum()
    assert not torch.allclose(loss, unclipped), "clip the ratio to [1 - clip, 1 + clip]"
    padded_mean = torch.max(-adv * torch.exp(logp_new - logp_old),
                            -adv * torch.exp(logp_new - logp_old).clamp(0.8, 1.2)).mean()
    assert not torch.allclose(loss, padded_mean), "average over the real tokens only (mask)"
    assert torch.allclose(loss, want, atol=1e-5), (
        "take the max of the two NEGATED surrogates (the pessimistic one), per token")
    loss.backward()
    assert logp_new.grad is not None and logp_new.grad.abs().sum() > 0, "keep the gradient"
    values, old_values, returns = rand(), rand(), rand()
    v = attempt(clipped_value_loss, values, old_values, returns, mask, 0.2)
    assert torch.allclose(v, value_loss_clipped(values, old_values, returns, mask, 0.2),
                          atol=1e-5), ("value loss: 0.5 * masked mean of the max of the "
                                       "unclipped and clipped squared errors")
    print("✓ clipped_policy_loss and clipped_value_loss are correct")


check_losses()

# %% [markdown]
# ## Exercise 4 — the adaptive KL coefficient
#
# Return the new $\beta$ from the current one, the measured KL, the target, the number of
# responses $n$ of this batch and the horizon $H$.

# %% tags=["exercise"]
def update_beta(beta, kl, target, n, horizon):
    # BEGIN SOLUTION
    error = float(np.clip(kl / target - 1.0, -0.2, 0.2))
    return beta * (1.0 + error * n / horizon)
    # END SOLUTION


# %% tags=["check"]
def check_update_beta():
    from agents.core import AdaptiveKLController

    for kl in (0.0, 1.5, 2.0, 2.1, 9.0):
        ctl = AdaptiveKLController(0.1, target=2.0, horizon=1000)
        ctl.update(kl, 64)
        got = attempt(update_beta, 0.1, kl, 2.0, 64, 1000)
        assert abs(got - ctl.value) < 1e-9, (
            f"KL {kl}, target 2: expected beta {ctl.value:.6f}, got {got:.6f}. The error "
            "KL/target - 1 is clipped to [-0.2, 0.2] before it scales beta.")
    print("✓ update_beta is correct")


check_update_beta()

# %% [markdown]
# ## Putting it together: LM-PPO in 40 lines
#
# The loop below is LM-PPO with **your** functions. The rest comes from the library:
# `collect_rollout` (the policy writes one response per env, decoding on its KV cache),
# `response_logprobs` (one forward of the frozen reference), `forward_responses` (one forward
# of the actor-critic over prompt + response), `masked_whiten` (advantage normalisation) and
# `ActorCritic` (the SFT transformer with an LM head and a zero-initialised value head).

# %%
from agents.core import masked_mean, masked_whiten
from agents.ppo import ActorCritic
from agents.rollout import (
    collect_rollout,
    forward_responses,
    logprobs_of,
    make_envs,
    response_logprobs,
)


def train_ppo(iterations=12, beta=0.05, adaptive=True, kl_target=0.25, horizon=320,
              num_envs=64, epochs=2, minibatches=2, lr=1e-4, clip=0.2, seed=0):
    torch.manual_seed(seed)
    generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    envs = make_envs(num_envs)
    task, pad_id = envs.unwrapped.task, envs.unwrapped.tokenizer.pad_id
    reference = textenv.load_reference()
    agent = ActorCritic(reference)
    optimizer = torch.optim.Adam(agent.parameters(), lr=lr, eps=1e-5)
    history = []
    for it in range(iterations):
        # 1. rollout (no gradient); 2. log-probs of the reference, pi_old and its values
        prompts = [task.sample_prompt(rng) for _ in range(num_envs)]
        ro = collect_rollout(envs, agent.lm, prompts, max_new_tokens=40, temperature=1.0,
                             generator=generator, pad_id=pad_id)
        mask = ro.response_mask  # (N, T)
        logp_ref = response_logprobs(reference, ro, 1.0)  # (N, T)
        with torch.no_grad():
            logits, old_values = forward_responses(agent, ro)
            old_logp = logprobs_of(logits, ro.response_ids, 1.0) * mask
            old_values = old_values * mask
        # 3. KL-shaped rewards; 4. GAE; advantages whitened over the batch
        rewards, kl = per_token_rewards(ro.scores, old_logp, logp_ref, mask, beta)
        advantages, returns = gae(rewards, old_values, mask, 1.0, 0.95)
        advantages = masked_whiten(advantages, mask)
        # 5. epochs x minibatches of the clipped losses
        for _ in range(epochs):
            for rows in torch.randperm(num_envs, generator=generator).chunk(minibatches):
                logits, values = forward_responses(agent, ro, rows)
                logp = logprobs_of(logits, ro.response_ids[rows], 1.0)
                loss = (clipped_policy_loss(logp, old_logp[rows], advantages[rows],
                                            mask[rows], clip)
                        + 0.5 * clipped_value_loss(values, old_values[rows], returns[rows],
                                                   mask[rows], 0.2))
                optimizer.zero_grad()
                loss.backward()
                torch.nn.utils.clip_grad_norm_(agent.parameters(), 1.0)
                optimizer.step()
        seq_kl = kl.sum(1).mean().item()
        explained = 1 - float(masked_mean((returns - old_values) ** 2, mask)
                              / masked_mean((returns - masked_mean(returns, mask)) ** 2, mask))
        history.append({"iteration": it, "reward": ro.scores.mean().item(),
                        "gold": ro.gold.mean().item(), "kl": seq_kl, "beta": beta,
                        "explained_variance": explained})
        if adaptive:  # 6. adapt beta to the KL just measured
            beta = update_beta(beta, seq_kl, kl_target, num_envs, horizon)
        print(f"it {it:2d}  reward {history[-1]['reward']:+.2f}  gold {history[-1]['gold']:.3f}"
              f"  KL {seq_kl:.2f}  beta {history[-1]['beta']:.3f}  EV {explained:+.2f}")
    return history


runs = {"adaptive beta (target KL 0.25)": train_ppo(adaptive=True)}
runs["fixed beta = 0.05"] = train_ppo(adaptive=False)

# %% [markdown]
# The horizon $H = 320$ responses (5 batches) is far shorter than InstructGPT's, and the
# target KL far smaller, so that $\beta$ moves visibly within this short run. In the plot:
# the learned reward and gold rise together at this small KL; the adaptive $\beta$ falls
# while the KL is below its target and grows once the KL passes it, which slows the KL down
# compared with the fixed $\beta$. The printed explained variance (EV) of the value head
# starts at 0 (a zero head predicts nothing); in so short a run the critic barely learns.

# %%
fig, axes = plt.subplots(1, 4, figsize=(15, 3.4))
for name, hist in runs.items():
    its = [h["iteration"] for h in hist]
    for ax, key in zip(axes, ("gold", "reward", "kl", "beta")):
        ax.plot(its, [h[key] for h in hist], marker=".", label=name)
for ax, title in zip(axes, ("gold score (rollout mean)", "learned reward (rollout mean)",
                            "KL to reference (nats)", "beta")):
    ax.set(title=title, xlabel="iteration")
axes[2].axhline(0.25, color="gray", ls=":", label="KL target")
axes[2].legend(fontsize=8)
fig.tight_layout()
fig.savefig("lab3_ppo.png", dpi=80)

# %% [markdown]
# **Expected plot** (from the solution run; your curves differ in the details):
#
# ![expected: PPO with adaptive and fixed beta](images/lab3_ppo.png)
#
# The library's full version is `agents.ppo` (`textenv train ppo --help`): the same phases
# plus early stopping on approx-KL, learning-rate annealing, the k3 estimator, PPO-ptx and
# the held-out evaluation.
#
# ## Questions
#
# 1. Why is the value head initialised to zero rather than randomly?
# 2. PPO reuses each rollout for several epochs. What would go wrong without the clip?
# 3. Set `kl_target=4` and rerun: what happens to $\beta$, the KL and gold?
# 4. The explained variance stays near or below 0 here. What would help the critic?

# %% tags=["solution"]
# Answers (teacher's version):
# 1. A random head adds noise to every advantage at the start (delta_t contains V); a zero
#    head makes the first advantages the plain returns, and the critic learns from there.
# 2. After the first epoch pi differs from pi_old; an unclipped ratio keeps pushing the
#    probability of high-advantage tokens up without limit, and the policy can move far
#    outside the region where the advantages (estimated under pi_old) are valid.
# 3. The KL sits below 4, so beta shrinks (by up to 4% per batch with n/H = 0.2), the
#    policy moves further from the reference, and gold may rise or fall (Lab 5).
# 4. More value updates per rollout (more epochs/minibatches), a higher learning rate for
#    the fresh head, longer training; the library's LM-PPO uses 4 epochs x 4 minibatches.
