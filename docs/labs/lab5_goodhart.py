# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lab 5 — Goodhart's law: reward-model over-optimisation
#
# *"When a measure becomes a target, it ceases to be a good measure."*
#
# **Learning goals.**
#
# 1. see over-optimisation happen: as the policy drifts from the reference, the gold score
#    peaks and falls, and the learned (proxy) reward overstates how good the policy is;
# 2. measure the drift as KL and compare RL with and without the KL penalty, and with
#    best-of-n sampling (no training at all);
# 3. fit the scaling forms of Gao et al. (2022) and read off where to stop.
#
# **Time:** about 45 minutes of work (the solution's run time: docs/labs/README.md).
#
# ## The forms
#
# Let $d = \sqrt{\mathrm{KL}(\pi \,\|\, \pi_{\mathrm{ref}})}$ and $R(d)$ the gain in score
# over the reference policy. Gao et al. found, for gold and for the proxy reward,
#
# $$ R_{\mathrm{bon}}(d) = d\,(\alpha_{\mathrm{bon}} - \beta_{\mathrm{bon}}\, d), \qquad
#    R_{\mathrm{RL}}(d) = d\,(\alpha_{\mathrm{RL}} - \beta_{\mathrm{RL}} \log d). $$
#
# Both are **linear in $(\alpha, \beta)$**, so least squares fits them: for best-of-n the
# design matrix has columns $(d, -d^2)$, for RL $(d, -d\log d)$. Best-of-n (sample $n$
# responses from $\pi_{\mathrm{ref}}$, keep the one the reward model likes best) has a
# closed-form KL:
#
# $$ \mathrm{KL}_{\mathrm{bon}}(n) = \log n - \frac{n - 1}{n}. $$

# %% tags=["setup"]
import math

import matplotlib.pyplot as plt
import numpy as np
import torch

torch.set_num_threads(2)


def attempt(fn, *args, **kwargs):
    """Call an exercise function; a TODO that is still open fails the check politely."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(f"{fn.__name__} is not implemented yet: replace the TODO "
                             "in its cell, run that cell, then this one again.") from None


# %% [markdown]
# ## Exercise 1 — the KL of best-of-n

# %% tags=["exercise"]
def best_of_n_kl(n):
    # BEGIN SOLUTION
    return math.log(n) - (n - 1) / n
    # END SOLUTION


# %% tags=["check"]
def check_best_of_n_kl():
    from agents.best_of_n import analytic_kl

    assert abs(attempt(best_of_n_kl, 1)) < 1e-12, "best-of-1 is the reference itself: KL 0"
    for n in (2, 4, 16, 64):
        assert abs(best_of_n_kl(n) - analytic_kl(n)) < 1e-9, (
            f"n = {n}: expected {analytic_kl(n):.4f} nats, got {best_of_n_kl(n)}; natural "
            "log, and (n - 1) / n as a float division")
    print("✓ best_of_n_kl is correct")


check_best_of_n_kl()

# %% [markdown]
# ## Exercise 2 — fit the Gao et al. forms
#
# `d` and `gain` are 1-D numpy arrays of the same length. Return `(alpha, beta)` as floats,
# by least squares (`np.linalg.lstsq`). For the RL form use only the points with $d > 0$
# ($d \log d$ at $d = 0$ is a limit, not a number numpy computes).

# %% tags=["exercise"]
def fit_bon(d, gain):
    # BEGIN SOLUTION
    design = np.stack([d, -d * d], 1)  # (P, 2)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    return float(alpha), float(beta)
    # END SOLUTION


def fit_rl(d, gain):
    # BEGIN SOLUTION
    keep = d > 0
    design = np.stack([d[keep], -d[keep] * np.log(d[keep])], 1)  # (P, 2)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain[keep], rcond=None)
    return float(alpha), float(beta)
    # END SOLUTION


# %% tags=["check"]
def check_fits():
    from agents import analysis

    rng = np.random.default_rng(0)
    d = np.concatenate([[0.0], rng.uniform(0.05, 3, 40)])
    for form, fit, library in (("bon", fit_bon, analysis.fit_bon),
                               ("RL", fit_rl, analysis.fit_rl)):
        exact = analysis.gao_curve(form.lower(), 0.3, 0.1, np.where(d > 0, d, 1e-9))
        got = attempt(fit, d, exact)
        assert len(got) == 2, "return the pair (alpha, beta)"
        assert np.allclose(got, (0.3, 0.1), atol=1e-4), (
            f"{form} form: noise-free points of alpha = 0.3, beta = 0.1 should be fitted "
            f"exactly, got {got}. Check the signs of the design matrix columns.")
        noisy = exact + rng.normal(0, 0.02, len(d))
        assert np.allclose(fit(d, noisy), library(d, noisy), atol=1e-6), (
            f"{form} form: least squares on noisy points disagrees with the reference fit")
        assert all(np.isfinite(fit(d, noisy))), "drop the points with d = 0 (RL form)"
    print("✓ fit_bon and fit_rl are correct")


check_fits()

# %% [markdown]
# ## Exercise 3 — where does gold peak?
#
# Setting $R'(d) = 0$: where does each fitted curve peak? Return $d^\ast$ for
# `form="bon"` and `form="rl"` (assume $\alpha, \beta > 0$). The KL at the peak is
# $d^{\ast 2}$: past it, optimising the proxy harder makes the policy worse.

# %% tags=["exercise"]
def peak_d(form, alpha, beta):
    # BEGIN SOLUTION
    return alpha / (2 * beta) if form == "bon" else math.exp(alpha / beta - 1)
    # END SOLUTION


# %% tags=["check"]
def check_peak_d():
    from agents.analysis import gao_curve

    grid = np.linspace(1e-4, 20, 400_001)
    for form in ("bon", "rl"):
        for alpha, beta in ((0.3, 0.1), (0.2, 0.15)):
            want = grid[np.argmax(gao_curve(form, alpha, beta, grid))]
            got = attempt(peak_d, form, alpha, beta)
            assert abs(got - want) < 1e-3, (
                f"{form}, alpha={alpha}, beta={beta}: the curve peaks at d = {want:.3f}, "
                f"got {got}. Differentiate d(alpha - beta d) or d(alpha - beta log d).")
    print("✓ peak_d is correct")


check_peak_d()

# %% [markdown]
# ## The experiment
#
# **Best-of-n.** On the held-out eval prompts (one slot each), sample 16 candidates per
# prompt from the SFT policy and keep the learned reward model's favourite among the first
# $k$, for $k = 1 \dots 16$ (`agents.best_of_n.best_of_n`). Gold and the proxy of the chosen
# responses give one point per $k$, at $\mathrm{KL}_{\mathrm{bon}}(k)$.

# %%
import textenv
from agents.best_of_n import best_of_n
from agents.evaluation import EvalSet, Evaluator

evaluator = Evaluator(textenv.load_reference(), task="reviews", max_new_tokens=40)
bon = best_of_n(evaluator, EvalSet("eval", 1), n=16, select_by="reward", budget=float("inf"),
                seed=0)["curve"]
sft_gold, sft_reward = bon[0]["gold"], bon[0]["reward"]  # k = 1: the SFT policy itself
for row in bon[:: 3]:
    print(f"n = {row['n']:2d}  KL {best_of_n_kl(row['n']):.2f}  gold {row['gold']:.3f}"
          f"  learned reward {row['reward']:+.2f}")

# %% [markdown]
# **RL.** LM-PPO (`agents.ppo`) for 10,000 env steps with a high learning rate, twice: with a
# fixed KL penalty $\beta = 0.2$ and without one ($\beta = 0$). Every 3 iterations it
# evaluates on the same eval prompts: gold, learned reward and KL to the reference. (The
# slowest cell of the lab.)

# %%
from agents.ppo import PPOConfig, train

common = dict(total_env_steps=10_000, learning_rate=5e-4, anneal_lr=False, adaptive_kl=False,
              eval_every=3, eval_samples=1, progress=False, tensorboard=False, threads=2,
              seed=1)
runs = {"PPO, beta = 0.2": train(PPOConfig(init_kl_coef=0.2, run_dir="runs/kl", **common)),
        "PPO, no KL penalty": train(PPOConfig(init_kl_coef=0.0, run_dir="runs/nokl",
                                              **common))}
curves = {}
for name, result in runs.items():
    rows = [r for r in result["history"] if "eval/kl" in r]
    curves[name] = np.array([(0.0, sft_gold, sft_reward)]
                            + [(r["eval/kl"], r["eval/gold_mean"], r["eval/reward_mean"])
                               for r in rows])  # (P, 3): KL, gold, learned reward
    for kl, gold, reward in curves[name]:
        print(f"{name:>20}: KL {kl:5.2f}  gold {gold:.3f}  learned reward {reward:+.2f}")

# %% [markdown]
# Now fit: gains over the SFT policy against $d = \sqrt{\mathrm{KL}}$, the best-of-n form to
# the best-of-n points, the RL form to the run without a penalty (it reaches the largest KL).

# %%
bon_d = np.sqrt([best_of_n_kl(r["n"]) for r in bon])
bon_gold = np.array([r["gold"] for r in bon]) - sft_gold
bon_proxy = np.array([r["reward"] for r in bon]) - sft_reward
free = curves["PPO, no KL penalty"]
rl_d, rl_gold, rl_proxy = np.sqrt(np.maximum(free[:, 0], 0)), free[:, 1] - sft_gold, \
    free[:, 2] - sft_reward
fits = {("bon", "gold"): fit_bon(bon_d, bon_gold), ("bon", "proxy"): fit_bon(bon_d, bon_proxy),
        ("rl", "gold"): fit_rl(rl_d, rl_gold), ("rl", "proxy"): fit_rl(rl_d, rl_proxy)}
for (form, what), (alpha, beta) in fits.items():
    peak = (f"peak at KL {peak_d(form, alpha, beta) ** 2:.2f}" if alpha > 0 and beta > 0
            else "no peak in this range")
    print(f"{form:>3} {what:>5}: alpha {alpha:+.3f}  beta {beta:+.3f}   {peak}")

# %%
fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
for ax, (what, column) in zip(axes, (("gold", 1), ("proxy", 2))):
    base = sft_gold if column == 1 else sft_reward
    ax.scatter(bon_d, (bon_gold if column == 1 else bon_proxy), color="tab:green", s=18,
               label="best-of-n")
    for (name, curve), color in zip(curves.items(), ("tab:blue", "tab:red")):
        ax.plot(np.sqrt(np.maximum(curve[:, 0], 0)), curve[:, column] - base, marker="o",
                color=color, label=name)
    for form, color, d in (("bon", "tab:green", bon_d), ("rl", "tab:red", rl_d)):
        alpha, beta = fits[(form, what)]
        xs = np.linspace(1e-3, d.max(), 200)
        ys = xs * (alpha - beta * xs) if form == "bon" else xs * (alpha - beta * np.log(xs))
        ax.plot(xs, ys, ls="--", color=color, alpha=0.8, label=f"fitted R_{form}")
    ax.axhline(0, color="gray", lw=0.5)
    ax.set(xlabel="d = sqrt(KL to the reference)", ylabel=f"{what} gain over SFT",
           title={"gold": "Gold score (the truth)", "proxy": "Learned reward (the proxy)"}[what])
axes[0].legend(fontsize=8)
fig.tight_layout()
fig.savefig("lab5_goodhart.png", dpi=80)

# %% [markdown]
# **Expected plot** (from the solution run):
#
# ![expected: without the KL penalty gold peaks then falls, the proxy less](images/lab5_goodhart.png)
#
# The full-size version: `textenv overoptimization` and `textenv compare` (docs/results.md).
#
# ## Questions
#
# 1. Without the penalty, at what KL does gold peak, and what happens to the proxy after it?
# 2. Best-of-n reaches only $\log 16 - 15/16 \approx 1.8$ nats with 16 samples. Compare its
#    gold at that KL with the RL runs at the same KL: which uses its KL better?
# 3. What does the KL penalty buy, and what does it cost? How would you pick $\beta$ without
#    a gold score?

# %% tags=["solution"]
# Answers (teacher's version), for the solution run's numbers:
# 1. In the solution run gold peaks around d = 1.6 (a KL of about 2.4 nats) and then falls
#    back almost to the SFT policy's level by d = 1.75, losing 85% of its gain; the learned
#    reward loses only half of its gain over the same stretch. The policy is moving into
#    text the reward model misjudges, and the proxy alone would hide most of the damage.
#    (With the less accurate reward model shipped before, gold accuracy 0.77 instead of
#    0.88, the proxy kept climbing while gold fell.)
# 2. Best-of-n is very KL-efficient: at the same KL it usually matches or beats RL on
#    gold, but its KL grows only like log n, so it cannot go far (and costs n samples per
#    query at inference time).
# 3. It keeps the policy where the reward model is trustworthy: gold does not collapse,
#    at the price of a lower proxy reward. Without gold: hold out human comparisons (or a
#    second reward model / an ensemble) and stop or raise beta when they stop improving;
#    pick a KL budget from a fitted curve like the ones above.
