# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lab 1 — Text generation as a Markov decision process
#
# **Learning goals.** After this lab you can
#
# 1. write text generation as an MDP: states, actions (tokens), transitions, rewards;
# 2. run episodes of `TextGen-v0` with any policy through the Gymnasium API;
# 3. turn a language model into a policy: next-token probabilities from an observation;
# 4. compare a random policy with the supervised (SFT) policy, and a *learned* reward with
#    the *gold* score it imitates.
#
# **Time:** about 30 minutes of work (the solution's run time: docs/labs/README.md).
#
# ## The MDP
#
# A prompt $x$ (an instruction) is drawn at reset. The state at step $t$ is the prompt and the
# response so far, $s_t = (x, y_{<t})$. The action is the next token, $a_t = y_t \in V$ (the
# vocabulary). The transition is deterministic: $s_{t+1} = (x, y_{\le t})$. The episode ends
# when the agent emits `<eos>` or the response reaches `max_new_tokens`. The reward is
# zero on every step but the last, where a reward function scores the whole response:
#
# $$ r_t = 0 \;(t < T), \qquad r_T = R(x, y), \qquad G_0 = \sum_t r_t = R(x, y). $$
#
# A language model with logits $z_\theta(s_t) \in \mathbb{R}^{|V|}$ is a stochastic policy,
# $\pi_\theta(a \mid s_t) = \mathrm{softmax}(z_\theta(s_t) / \tau)_a$ at temperature $\tau$.
# The probability of a whole response factorises over tokens:
# $\log \pi_\theta(y \mid x) = \sum_t \log \pi_\theta(y_t \mid x, y_{<t})$.
#
# `TextGen-v0` scores responses with a **learned reward model** (trained on noisy rankings,
# Lab 4) and also reports a hidden **gold** score in `info["gold_score"]`, the ground truth
# the reward model was trained to imitate. Real RLHF has no gold score: here we can measure
# how far the proxy can be trusted.

# %% tags=["setup"]
import gymnasium as gym
import matplotlib.pyplot as plt
import numpy as np
import torch

import textenv  # registers TextGen-v0

torch.set_num_threads(2)
tokenizer = textenv.load_tokenizer()
print("vocabulary size:", tokenizer.vocab_size, "  eos id:", tokenizer.eos_id,
      "  pad id:", tokenizer.pad_id)


def attempt(fn, *args, **kwargs):
    """Call an exercise function; a TODO that is still open fails the check politely."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(f"{fn.__name__} is not implemented yet: replace the TODO "
                             "in its cell, run that cell, then this one again.") from None


# %% [markdown]
# Look at one episode by hand: the observation is the token ids of `[bos] + prompt +
# response so far`, right-padded with `<pad>` (id 0).

# %%
env = gym.make("TextGen-v0")  # reward="learned": the shipped reward model
obs, info = env.reset(seed=0)
print("prompt:", info["prompt"])
print("observation:", obs[:20], "... shape", obs.shape)
print("action space:", env.action_space)

# %% [markdown]
# ## Exercise 1 — run an episode
#
# Write `run_episode(env, act, seed)`: reset `env` with `seed`, then call `act(obs)` for the
# action of every step until the episode ends (`terminated or truncated`). Return a dict with
#
# - `"prompt"`: the prompt (`info["prompt"]` of the reset),
# - `"actions"`: the list of actions taken (ints),
# - `"return"`: the sum of the rewards,
# - `"response"`, `"gold"`: `info["response"]` and `info["gold_score"]` of the last step.

# %% tags=["exercise"]
def run_episode(env, act, seed):
    # BEGIN SOLUTION
    obs, info = env.reset(seed=seed)
    prompt, actions, total = info["prompt"], [], 0.0
    done = False
    while not done:
        action = int(act(obs))
        obs, reward, terminated, truncated, info = env.step(action)
        actions.append(action)
        total += float(reward)
        done = terminated or truncated
    return {"prompt": prompt, "actions": actions, "return": total,
            "response": info["response"], "gold": float(info["gold_score"])}
    # END SOLUTION


# %% tags=["check"]
def check_run_episode():
    env = gym.make("TextGen-v0")
    out = attempt(run_episode, env, lambda obs: tokenizer.eos_id, 3)
    assert isinstance(out, dict), f"run_episode should return a dict, got {type(out).__name__}"
    missing = {"prompt", "actions", "return", "response", "gold"} - set(out)
    assert not missing, f"the dict misses the keys {sorted(missing)}"
    assert out["actions"] == [tokenizer.eos_id], (
        f"a policy that always emits <eos> ends after one step; got actions {out['actions']}. "
        "Stop when terminated or truncated is True.")
    # A fixed sequence of tokens, compared with a loop of our own.
    tokens = [5 + (7 * i) % 100 for i in range(60)]
    fixed = iter(tokens)
    out = attempt(run_episode, env, lambda obs: next(fixed), 4)
    obs, info = env.reset(seed=4)
    rewards, done, i = [], False, 0
    while not done:
        obs, r, terminated, truncated, step_info = env.step(tokens[i])
        rewards.append(float(r))
        done, i = terminated or truncated, i + 1
    assert out["prompt"] == info["prompt"], (
        "the prompt differs: reset the env with the seed you are given, and keep info['prompt']")
    assert out["actions"] == tokens[:i], "the actions differ from the ones `act` returned"
    assert abs(out["return"] - sum(rewards)) < 1e-6, (
        f"the return should be the sum of all rewards ({sum(rewards):.4f}), "
        f"got {out['return']:.4f}")
    assert out["response"] == step_info["response"], "response: use info of the last step"
    assert abs(out["gold"] - step_info["gold_score"]) < 1e-6, "gold: info['gold_score']"
    print("✓ run_episode is correct")


check_run_episode()

# %% [markdown]
# ## Exercise 2 — a language model as a policy
#
# `textenv.load_policy("sft")` gives the supervised policy, a small GPT: `model(ids, mask)`
# maps token ids `(B, T)` to logits `(B, T, V)`, where position $t$ predicts token $t+1$.
# Write `next_token_probs(model, obs, temperature)`: the distribution
# $\pi(\cdot \mid s_t) = \mathrm{softmax}(z / \tau)$ of the next token, a tensor `(V,)`.
#
# Careful: the observation is right-padded. The logits that predict the next token sit at
# the **last real token**, not at the last position. (Treat every id that is not `<pad>`
# as real.) Use `torch.no_grad()`: we only sample here.

# %% tags=["exercise"]
def next_token_probs(model, obs, temperature=1.0):
    # BEGIN SOLUTION
    ids = torch.as_tensor(obs, dtype=torch.long)  # (L,)
    n = int((ids != tokenizer.pad_id).nonzero().max()) + 1  # real tokens
    with torch.no_grad():
        logits = model(ids[None, :n])[0, -1]  # (V,) the logits after the last real token
    return torch.softmax(logits / temperature, dim=-1)
    # END SOLUTION


# %% tags=["check"]
def check_next_token_probs():
    model = textenv.load_reference()
    env = gym.make("TextGen-v0")
    obs, _ = env.reset(seed=1)
    for token in (40, 50, 60):  # a few response tokens, so the check sees a longer state
        obs, *_ = env.step(token)
    n = int(np.flatnonzero(obs != tokenizer.pad_id).max()) + 1
    with torch.no_grad():
        logits = model(torch.as_tensor(obs[None, :n]))[0, -1]
    for temperature in (1.0, 0.7):
        probs = attempt(next_token_probs, model, obs, temperature)
        probs = torch.as_tensor(probs, dtype=torch.float32).reshape(-1)
        assert probs.shape == (tokenizer.vocab_size,), (
            f"expected a vector of {tokenizer.vocab_size} probabilities, got {tuple(probs.shape)}")
        assert abs(float(probs.sum()) - 1) < 1e-4, "the probabilities should sum to 1 (softmax)"
        expected = torch.softmax(logits / temperature, -1)
        padded = torch.softmax(model(torch.as_tensor(obs[None]))[0, -1] / temperature, -1)
        assert not torch.allclose(probs, padded.detach(), atol=1e-4), (
            "these are the logits at the last position of the padded observation: read them "
            "at the last real (non-pad) token instead")
        assert torch.allclose(probs, expected, atol=1e-4), (
            f"wrong distribution at temperature {temperature}: divide the logits of the last "
            "real token by the temperature, then softmax")
    print("✓ next_token_probs is correct")


check_next_token_probs()

# %% [markdown]
# ## Random policy vs SFT policy
#
# Now sample episodes from two policies: uniformly random tokens, and the SFT policy. We keep
# the learned reward (the return) and the gold score of each. (The slowest cell here: the
# single env and a full forward per token are simple but slow; later labs use the batched
# vector env.)

# %%
sft = textenv.load_reference()  # frozen SFT policy
rng = np.random.default_rng(0)
torch.manual_seed(0)


def random_act(obs):
    return int(rng.integers(tokenizer.vocab_size))


def sft_act(obs):
    return int(torch.multinomial(next_token_probs(sft, obs), 1))


episodes = {name: [run_episode(env, act, seed) for seed in range(48)]
            for name, act in (("random", random_act), ("SFT", sft_act))}
for name, eps in episodes.items():
    print(f"{name:>6}: learned reward {np.mean([e['return'] for e in eps]):+.2f}   "
          f"gold {np.mean([e['gold'] for e in eps]):.3f}   "
          f"length {np.mean([len(e['actions']) for e in eps]):.1f} tokens")
    for e in eps[:2]:
        print(f"        {e['prompt']}\n          -> {e['response']}  (gold {e['gold']:.2f})")

# %% [markdown]
# ## Exercise 3 — does the learned reward agree with gold?
#
# Write `rank_correlation(x, y)`, Spearman's $\rho$: the Pearson correlation of the *ranks*
# of `x` and of `y`. Tied values get the average of the ranks they span (gold has many ties,
# e.g. every degenerate response scores 0). Use numpy only.

# %% tags=["exercise"]
def rank_correlation(x, y):
    # BEGIN SOLUTION
    def ranks(v):
        v = np.asarray(v, dtype=float)
        order = np.argsort(v, kind="stable")
        r = np.empty(len(v))
        r[order] = np.arange(len(v))
        for value in np.unique(v):  # ties: the average of their ranks
            tied = v == value
            r[tied] = r[tied].mean()
        return r

    return float(np.corrcoef(ranks(x), ranks(y))[0, 1])
    # END SOLUTION


# %% tags=["check"]
def check_rank_correlation():
    from scipy.stats import spearmanr

    x = np.arange(10.0)
    assert abs(attempt(rank_correlation, x, x ** 3) - 1) < 1e-9, (
        "a monotone transformation keeps the order: rho should be 1")
    assert abs(rank_correlation(x, -x) + 1) < 1e-9, "a reversed order gives rho = -1"
    r = np.random.default_rng(0)
    a, b = r.normal(size=50), r.normal(size=50)
    assert abs(rank_correlation(a, a + b) - spearmanr(a, a + b)[0]) < 1e-9, (
        "rho is the Pearson correlation of the ranks (np.corrcoef of the two rank vectors)")
    ties = np.array([0, 0, 0, 0.5, 0.5, 1, 0, 0.2])
    other = np.array([1, 2, 3, 4, 5, 6, 7, 8.0])
    assert abs(rank_correlation(ties, other) - spearmanr(ties, other)[0]) < 1e-9, (
        "ties: give tied values the average of the ranks they span")
    print("✓ rank_correlation is correct")


check_rank_correlation()

# %% [markdown]
# On the SFT policy's own samples the learned reward follows gold well, and it puts every
# random response far below. The plot below should look like the expected one.

# %%
fig, axes = plt.subplots(1, 2, figsize=(10, 3.8))
for name, color in (("random", "tab:gray"), ("SFT", "tab:blue")):
    eps = episodes[name]
    reward, gold = [e["return"] for e in eps], [e["gold"] for e in eps]
    axes[0].hist(reward, bins=15, alpha=0.6, color=color, label=name)
    rho = (f"ρ = {rank_correlation(gold, reward):.2f}" if np.ptp(gold) > 0
           else "gold is always 0")
    axes[1].scatter(gold, reward, s=14, alpha=0.7, color=color, label=f"{name} ({rho})")
axes[0].set(xlabel="learned reward (return)", ylabel="episodes",
            title="Random vs SFT policy")
axes[1].set(xlabel="gold score", ylabel="learned reward", title="Learned reward vs gold")
for ax in axes:
    ax.legend()
fig.tight_layout()
fig.savefig("lab1_rewards.png", dpi=80)
all_eps = episodes["random"] + episodes["SFT"]
print("Spearman(gold, learned) over both policies:",
      round(rank_correlation([e["gold"] for e in all_eps], [e["return"] for e in all_eps]), 3))

# %% [markdown]
# **Expected plot** (from the solution run):
#
# ![expected: random vs SFT, learned reward vs gold](images/lab1_rewards.png)
#
# ## Questions
#
# 1. How many actions does the random policy usually take, and why?
# 2. The reward model never saw a random response when it was trained. Why does it still
#    score them low? Would you trust it as much on responses *better* than SFT's?
# 3. A policy optimised against the learned reward will drift away from the SFT samples.
#    What could happen to the correlation you measured? (Lab 5 measures it.)

# %% tags=["solution"]
# Answers (teacher's version):
# 1. Usually max_new_tokens (40): <eos> is 1 token of 136, so about 3 episodes in 4 never
#    emit it ((135/136)^40 = 0.74); the response is word salad.
# 2. It was trained on SFT samples, which are mostly grammatical; anything far from them
#    (no grammar, no <eos>) lands at the low end of its scale. It ranks *near* SFT's
#    distribution well; beyond it (what RL explores) it extrapolates, with no guarantee.
# 3. It falls: the policy finds responses the reward model over-rates (Goodhart's law);
#    gold stalls or drops while the learned reward keeps rising.
