# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lab 2 — Policy gradients from scratch
#
# **Learning goals.**
#
# 1. derive and implement the REINFORCE estimator for a whole response;
# 2. train a policy **from a random start** on the tiny `sequences` task (copy, reverse or
#    sort a few symbols), with a plain MLP as the policy;
# 3. measure how a baseline reduces the variance of the gradient without biasing it;
# 4. apply the same loss to the SFT language model on `reviews`.
#
# **Time:** about 45 minutes of work (the solution's run time: docs/labs/README.md).
#
# ## REINFORCE
#
# A response $y = (y_1 \dots y_T)$ to prompt $x$ has probability
# $\pi_\theta(y \mid x) = \prod_t \pi_\theta(y_t \mid x, y_{<t})$ and return $G = R(x, y)$
# (the only reward comes at the end). The policy-gradient theorem (Williams 1992):
#
# $$ \nabla_\theta J = \mathbb{E}_{y \sim \pi_\theta}\Big[\big(G - b\big)\,
#    \nabla_\theta \sum_t \log \pi_\theta(y_t \mid x, y_{<t})\Big] $$
#
# for any baseline $b$ that does not depend on the sampled $y$ (since
# $\mathbb{E}[\nabla \log \pi] = 0$, it changes the variance, not the mean). With a batch of
# $N$ responses we minimise the surrogate loss
#
# $$ L(\theta) = -\frac1N \sum_{i=1}^N \big(G_i - b_i\big) \sum_t \log\pi_\theta(y_{i,t}
#    \mid s_{i,t}), $$
#
# whose gradient is the estimator above. Two baselines: a **moving average** of past returns,
# and **leave-one-out** (RLOO), $b_i = \frac{1}{N-1}\sum_{j \ne i} G_j$, the mean of the
# *other* responses of the batch, which does not depend on $y_i$.

# %% tags=["setup"]
import gymnasium as gym
import matplotlib.pyplot as plt
import numpy as np
import torch

import textenv  # registers the TextGen envs
from textenv.wrappers import VectorOneHotObservation

torch.set_num_threads(2)


def attempt(fn, *args, **kwargs):
    """Call an exercise function; a TODO that is still open fails the check politely."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(f"{fn.__name__} is not implemented yet: replace the TODO "
                             "in its cell, run that cell, then this one again.") from None


# %% [markdown]
# ## Exercise 1 — the REINFORCE loss
#
# `logp_sum` is `(N,)`: $\sum_t \log\pi_\theta(y_{i,t} \mid s_{i,t})$ of each response, with
# gradient. `returns` is `(N,)` and `baseline` a float or an `(N,)` tensor. Return the scalar
# $L(\theta)$. The baseline must not carry gradient (detach it if it is a tensor).

# %% tags=["exercise"]
def reinforce_loss(logp_sum, returns, baseline):
    # BEGIN SOLUTION
    advantages = returns - torch.as_tensor(baseline, dtype=returns.dtype).detach()
    return -(advantages * logp_sum).mean()
    # END SOLUTION


# %% tags=["check"]
def check_reinforce_loss():
    from agents.core import sequence_policy_gradient_loss

    g = torch.Generator().manual_seed(0)
    logp = torch.randn(8, 5, generator=g).requires_grad_(True)
    mask = torch.ones(8, 5, dtype=torch.bool)
    returns = torch.rand(8, generator=g)
    got = attempt(reinforce_loss, logp.sum(1), returns, 0.3)
    assert torch.is_tensor(got) and got.dim() == 0, "return a scalar tensor"
    want = sequence_policy_gradient_loss(logp, returns - 0.3, mask)
    assert not torch.allclose(got, -want), "mind the sign: we MINIMISE the loss"
    assert torch.allclose(got, want, atol=1e-6), "loss = -mean((G - b) * logp_sum)"
    # A baseline that depends on the parameters must not leak gradient.
    b = logp.sum(1).mean() - logp.sum(1).mean().detach() + returns.mean()  # value: mean G
    got = reinforce_loss(logp.sum(1), returns, b)
    (grad,) = torch.autograd.grad(got, logp)
    (want_grad,) = torch.autograd.grad(
        sequence_policy_gradient_loss(logp, returns - returns.mean(), mask), logp)
    assert torch.allclose(grad, want_grad, atol=1e-6), "detach the baseline"
    print("✓ reinforce_loss is correct")


check_reinforce_loss()

# %% [markdown]
# ## Exercise 2 — the leave-one-out baseline
#
# Return the `(N,)` tensor $b_i = \frac{1}{N-1}\sum_{j\ne i} G_j$ (in one line, without a
# loop over $i$).

# %% tags=["exercise"]
def leave_one_out_baseline(returns):
    # BEGIN SOLUTION
    return (returns.sum() - returns) / (len(returns) - 1)
    # END SOLUTION


# %% tags=["check"]
def check_leave_one_out_baseline():
    returns = torch.tensor([1.0, 2.0, 3.0, 6.0])
    got = attempt(leave_one_out_baseline, returns)
    want = torch.tensor([11 / 3, 10 / 3, 3.0, 2.0])
    assert torch.allclose(torch.as_tensor(got, dtype=torch.float32), want), (
        f"for G = {returns.tolist()} expected {want.tolist()}, got {got}: the mean of the "
        "OTHER N - 1 returns (not the mean of all N)")
    print("✓ leave_one_out_baseline is correct")


check_leave_one_out_baseline()

# %% [markdown]
# ## From scratch: the `sequences` task
#
# `TextGen-Sequences-v0` asks for a copy, the reverse or the sorted version of up to 3
# symbols (`reverse a c b :` → `b c a <eos>`), with 16 tokens in all. The gold score gives
# 1 for the exact answer and partial credit (at most 0.5) for a close one. We train on gold
# directly: there is no reward model to fool here. The policy is an MLP on the one-hot
# observation (`VectorOneHotObservation`: 11 positions × 16 tokens), **randomly
# initialised**: no language model at all.
#
# The vector env runs 64 episodes at once. A batch is one episode per env: we step until
# every env has finished once, and keep each response's summed log-probability (steps after
# an env's episode ended are masked out; the env autoresets them).

# %%
def make_envs(num_envs=64):
    return VectorOneHotObservation(gym.make_vec(
        "TextGen-Sequences-v0", num_envs=num_envs, reward="gold",
        vectorization_mode="vector_entry_point"))


def run_batch(policy, envs, seed):
    """One episode per env -> (logp_sum (N,) with gradient, returns (N,))."""
    obs, _ = envs.reset(seed=seed)
    n = envs.num_envs
    done, logp_sum, returns = np.zeros(n, bool), torch.zeros(n), np.zeros(n, np.float32)
    while not done.all():
        dist = torch.distributions.Categorical(logits=policy(torch.as_tensor(obs)))
        actions = dist.sample()  # (N,)
        logp_sum = logp_sum + dist.log_prob(actions) * torch.as_tensor(~done)
        obs, reward, terminated, truncated, _ = envs.step(actions.numpy())
        finished = (terminated | truncated) & ~done
        returns[finished] = reward[finished]
        done |= finished
    return logp_sum, torch.as_tensor(returns)


def new_policy(envs, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(envs.single_observation_space.shape[0], 128),
                               torch.nn.Tanh(),
                               torch.nn.Linear(128, envs.single_action_space.n))


envs = make_envs()
obs, info = envs.reset(seed=0)
print("prompt:", info["prompt"][0], "| observation", obs.shape, "| actions",
      envs.single_action_space)

# %% [markdown]
# ### Training
#
# 120 iterations of 64 episodes, without a baseline and with leave-one-out.

# %%
def train_from_scratch(baseline_kind, iterations=120, lr=1e-2, seed=0):
    policy = new_policy(envs, seed)
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    curve = []
    for it in range(iterations):
        logp_sum, returns = run_batch(policy, envs, seed=seed * 10_000 + it)
        baseline = leave_one_out_baseline(returns) if baseline_kind == "leave-one-out" else 0.0
        loss = reinforce_loss(logp_sum, returns, baseline)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        curve.append(returns.mean().item())
    print(f"{baseline_kind:>15}: gold {np.mean(curve[:10]):.3f} (first 10 iterations) -> "
          f"{np.mean(curve[-10:]):.3f} (last 10)")
    return policy, curve


scratch = {kind: train_from_scratch(kind) for kind in ("none", "leave-one-out")}
policy = scratch["leave-one-out"][0]
obs, info = envs.reset(seed=123)
with torch.no_grad():  # a few greedy answers of the trained policy
    done, answers = np.zeros(64, bool), [""] * 64
    while not done.all():
        obs, r, terminated, truncated, step_info = envs.step(
            policy(torch.as_tensor(obs)).argmax(-1).numpy())
        for i in np.flatnonzero(terminated & ~done):
            answers[i] = f"{step_info['prompt'][i]} {step_info['response'][i]} (gold {r[i]:.2f})"
        done |= terminated
print("\n".join(answers[:5]))

# %% [markdown]
# ### The variance of the gradient, measured
#
# Take the trained policy (its returns are far from 0, which is when a baseline matters),
# estimate the gradient from 30 independent batches with each baseline, and measure the
# spread of the estimates around their mean (summed over parameters). The mean gradient is
# about the same for all three; the spread is not.

# %%
def gradient_estimates(policy, baseline_kind, batches=30):
    grads, moving = [], None
    for b in range(batches):
        logp_sum, returns = run_batch(policy, envs, seed=1000 + b)
        moving = returns.mean().item() if moving is None else moving  # starts at batch 1
        baseline = {"none": 0.0, "moving average": moving,
                    "leave-one-out": leave_one_out_baseline(returns)}[baseline_kind]
        moving = 0.9 * moving + 0.1 * returns.mean().item()
        policy.zero_grad()
        reinforce_loss(logp_sum, returns, baseline).backward()
        grads.append(torch.cat([p.grad.reshape(-1) for p in policy.parameters()]))
    return torch.stack(grads)  # (batches, parameters)


variance = {}
for kind in ("none", "moving average", "leave-one-out"):
    g = gradient_estimates(policy, kind)
    variance[kind] = g.var(0).sum().item()
    print(f"{kind:>15}: total variance {variance[kind]:.2e}   |mean gradient| "
          f"{g.mean(0).norm():.2e}")

# %% [markdown]
# ## The same loss on `reviews`, starting from the SFT policy
#
# Now the policy is the SFT language model and the reward the learned reward model. The
# rollout helper decodes on the model's KV cache; `forward_responses` gives every response
# token's logits in one forward, with gradient. 10 iterations of 64 responses, with the
# leave-one-out baseline and no KL penalty.

# %%
from agents.rollout import collect_rollout, forward_responses, logprobs_of
from agents.rollout import make_envs as make_lm_envs


def train_reviews(iterations=10, lr=3e-5, seed=0):
    torch.manual_seed(seed)
    generator, rng = torch.Generator().manual_seed(seed), np.random.default_rng(seed)
    lm_envs = make_lm_envs(64)
    task, pad_id = lm_envs.unwrapped.task, lm_envs.unwrapped.tokenizer.pad_id
    policy = textenv.load_policy("sft")
    optimizer = torch.optim.Adam(policy.parameters(), lr=lr)
    curve = []
    for _ in range(iterations):
        ro = collect_rollout(lm_envs, policy, [task.sample_prompt(rng) for _ in range(64)],
                             max_new_tokens=40, temperature=1.0, generator=generator,
                             pad_id=pad_id)
        logp = logprobs_of(forward_responses(policy, ro), ro.response_ids, 1.0)  # (N, T)
        logp_sum = (logp * ro.response_mask).sum(1)  # (N,)
        loss = reinforce_loss(logp_sum, ro.scores, leave_one_out_baseline(ro.scores))
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(policy.parameters(), 1.0)
        optimizer.step()
        curve.append((ro.scores.mean().item(), ro.gold.mean().item()))
    print(f"learned reward {curve[0][0]:+.2f} -> {curve[-1][0]:+.2f}, "
          f"gold {curve[0][1]:.3f} -> {curve[-1][1]:.3f}")
    return curve


reviews = train_reviews()

# %%
fig, axes = plt.subplots(1, 3, figsize=(15, 3.8))
axes[0].bar(list(variance), list(variance.values()), color=["gray", "tab:orange", "tab:blue"])
axes[0].set(ylabel="total variance of the gradient estimate",
            title="Gradient variance at the trained policy")
for kind, (_, curve) in scratch.items():
    smooth = np.convolve(curve, np.ones(10) / 10, mode="valid")
    axes[1].plot(np.arange(len(smooth)) + 10, smooth, label=f"baseline: {kind}")
axes[1].set(xlabel="iteration (64 episodes)", ylabel="gold (10-iteration mean)",
            title="sequences, from a random MLP")
axes[2].plot([c[0] for c in reviews], marker=".", label="learned reward")
axes[2].set(xlabel="iteration (64 responses)", ylabel="learned reward (batch mean)",
            title="reviews, from the SFT policy")
gold_axis = axes[2].twinx()
gold_axis.plot([c[1] for c in reviews], marker=".", color="tab:green", label="gold")
gold_axis.set(ylabel="gold (batch mean)")
gold_axis.legend(fontsize=8, loc="lower right")
for ax in axes[1:]:
    ax.legend(fontsize=8)
fig.tight_layout()
fig.savefig("lab2_policy_gradients.png", dpi=80)

# %% [markdown]
# **Expected plot** (from the solution run):
#
# ![expected: variance by baseline, learning curves](images/lab2_policy_gradients.png)
#
# The library versions: `agents.reinforce` (moving-average baseline, KL penalty) and
# `agents.rloo`; `examples/reinforce_minimal.py` is REINFORCE on the public API in one file.
#
# ## Questions
#
# 1. Why does a baseline leave the expected gradient unchanged? Why must $b_i$ not depend on
#    $y_i$? (What goes wrong with $b_i$ = the mean of all $N$ returns, $i$ included?)
# 2. On `sequences`, what does the policy learn first? Look at the greedy answers.
# 3. On `reviews` we trained without a KL penalty for only 10 steps. What would happen with
#    many more steps? (Labs 3 and 5.)

# %% tags=["solution"]
# Answers (teacher's version):
# 1. E[grad log pi(y)] = sum_y grad pi(y) = grad 1 = 0, so E[b grad log pi(y)] = 0 for any b
#    that does not depend on y. The batch mean contains G_i, so it is correlated with y_i:
#    the estimate is biased by a factor (N-1)/N (small for large N); leave-one-out is exact.
# 2. Read the greedy answers against the gold formula: partial credit is cut by 0.3 per
#    symbol too many or too few and halved without <eos>, so the right length and the
#    <eos> pay most and tend to come first; the symbols at the right positions follow.
# 3. The learned reward keeps rising while gold eventually falls: the policy exploits the
#    reward model (Goodhart), and nothing keeps it near the SFT policy.
