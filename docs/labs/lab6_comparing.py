# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lab 6 — Comparing algorithms honestly
#
# **Learning goals.**
#
# 1. why one seed (or three) cannot rank two RL algorithms: the spread between seeds;
# 2. confidence intervals by the bootstrap; robust aggregates (the interquartile mean);
#    the probability of improvement (Agarwal et al. 2021, `rliable`);
# 3. KL-matched comparisons: an algorithm that drifts further from the reference can look
#    better on reward while it merely spends more KL.
#
# **Time:** about 45 minutes of work (the solution's run time: docs/labs/README.md).
#
# ## The statistics
#
# Run each algorithm with $n$ seeds; each run gives a final score $x_i$ (here held-out gold).
#
# - **Bootstrap interval** of a statistic $s$ (mean, IQM): resample the $n$ runs with
#   replacement $B$ times, compute $s$ on each resample, and take the 2.5% and 97.5%
#   percentiles of the $B$ values.
# - **Interquartile mean (IQM)**: the mean of the middle 50% of the runs (drop the lowest and
#   the highest quarter). Less sensitive to one lucky or crashed seed than the mean, with
#   far less variance than the median.
# - **Probability of improvement** $P(X > Y)$: the chance that a random run of algorithm X
#   beats a random run of Y (ties count half),
#   $\frac{1}{n m}\sum_{i,j} \big([x_i > y_j] + \tfrac12 [x_i = y_j]\big)$.
# - **Gold at matched KL**: along a run, the evaluations give points (KL, gold). Read each
#   run's gold where its KL first reaches a value $k$, interpolating linearly between the
#   two evaluations around it; compare algorithms at the same $k$.

# %% tags=["setup"]
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
# ## Exercise 1 — the interquartile mean
#
# Sort the scores and average those whose rank lies in the middle half. With $n$ not
# divisible by 4 the quartiles cut through a score: give the boundary scores a fractional
# weight (this is `scipy.stats.trim_mean(x, 0.25)` when $n$ is divisible by 4; we compare
# with `rliable`'s definition, which is exactly that trimmed mean).

# %% tags=["exercise"]
def iqm(x):
    # BEGIN SOLUTION
    from scipy.stats import trim_mean

    return float(trim_mean(np.asarray(x, dtype=float), 0.25))
    # END SOLUTION


# %% tags=["check"]
def check_iqm():
    from rliable import metrics

    x = np.array([0.1, 0.5, 0.4, 0.45, 0.42, 0.9, 0.41, 0.0])
    got = attempt(iqm, x)
    assert abs(got - metrics.aggregate_iqm(x[:, None])) < 1e-9, (
        f"IQM of {x.tolist()} is {metrics.aggregate_iqm(x[:, None]):.4f} (the mean of the "
        f"middle four after sorting), got {got}")
    assert abs(iqm(np.arange(12.0)) - 5.5) < 1e-9, "the IQM of 0..11 is 5.5"
    print("✓ iqm is correct")


check_iqm()

# %% [markdown]
# ## Exercise 2 — a bootstrap confidence interval
#
# Return `(low, high)`: the 95% percentile-bootstrap interval of `statistic(x)` from `reps`
# resamples, drawn with `np.random.default_rng(seed)`.

# %% tags=["exercise"]
def bootstrap_ci(x, statistic=np.mean, reps=2000, seed=0):
    # BEGIN SOLUTION
    x = np.asarray(x, dtype=float)
    rng = np.random.default_rng(seed)
    values = [statistic(x[rng.integers(0, len(x), len(x))]) for _ in range(reps)]
    low, high = np.percentile(values, [2.5, 97.5])
    return float(low), float(high)
    # END SOLUTION


# %% tags=["check"]
def check_bootstrap_ci():
    rng = np.random.default_rng(1)
    x = rng.normal(0.4, 0.05, 40)
    out = attempt(bootstrap_ci, x)
    assert len(out) == 2, "return the pair (low, high)"
    low, high = out
    assert low < x.mean() < high, "the interval of the mean should contain the sample mean"
    width, expected = high - low, 2 * 1.96 * x.std(ddof=1) / np.sqrt(len(x))
    assert 0.8 * expected < width < 1.2 * expected, (
        f"the 95% interval of the mean of 40 runs should be about {expected:.4f} wide (the "
        f"normal approximation), got {width:.4f}: resample n of n runs WITH replacement, and "
        "take the 2.5 and 97.5 percentiles")
    assert bootstrap_ci(np.full(10, 0.3)) == (0.3, 0.3) or np.allclose(
        bootstrap_ci(np.full(10, 0.3)), 0.3), "identical runs give a zero-width interval"
    lo_iqm, hi_iqm = bootstrap_ci(x, iqm, reps=500)
    assert lo_iqm < hi_iqm, "use `statistic` on each resample (here the IQM)"
    print("✓ bootstrap_ci is correct")


check_bootstrap_ci()

# %% [markdown]
# ## Exercise 3 — probability of improvement, and gold at matched KL

# %% tags=["exercise"]
def probability_of_improvement(x, y):
    # BEGIN SOLUTION
    x, y = np.asarray(x, dtype=float)[:, None], np.asarray(y, dtype=float)[None, :]
    return float(((x > y) + 0.5 * (x == y)).mean())
    # END SOLUTION


def gold_at_kl(curve, kl):
    """curve: [(kl, gold), ...] in the run's order. NaN if the run never reaches `kl`."""
    # BEGIN SOLUTION
    for (k0, g0), (k1, g1) in zip(curve, curve[1:]):
        if min(k0, k1) <= kl <= max(k0, k1):
            return g1 if k1 == k0 else g0 + (g1 - g0) * (kl - k0) / (k1 - k0)
    return float("nan")
    # END SOLUTION


# %% tags=["check"]
def check_poi_and_gold_at_kl():
    from agents import analysis

    got = attempt(probability_of_improvement, [1, 2, 3], [2, 2, 0])
    assert abs(got - 6 / 9) < 1e-9, (
        f"[1, 2, 3] vs [2, 2, 0]: 5 wins and 2 ties of 9 pairs = 6/9, got {got}; ties count "
        "half, and every run of x meets every run of y")
    curve = [(0.0, 0.36), (0.4, 0.40), (1.2, 0.44), (0.9, 0.43), (2.5, 0.41)]
    for kl in (0.0, 0.2, 1.0, 2.0, 2.5):
        got, want = attempt(gold_at_kl, curve, kl), analysis.gold_at_kl(curve, kl)
        assert abs(got - want) < 1e-9, (
            f"gold at KL {kl}: expected {want:.4f} (interpolate between the first two "
            f"consecutive evaluations whose KLs bracket it), got {got}")
    assert np.isnan(gold_at_kl(curve, 3.0)), "a run that never reaches the KL gives NaN"
    print("✓ probability_of_improvement and gold_at_kl are correct")


check_poi_and_gold_at_kl()

# %% [markdown]
# ## The experiment: REINFORCE vs RLOO, 5 seeds each
#
# Both train the SFT policy on the learned reward with the same KL coefficient and the same
# budget of 3,000 env steps (generated tokens), then meet the same fixed evaluation: every
# held-out eval prompt, one sample each, the same sampling seed. Every 2 iterations they also
# evaluate on the eval prompts, which gives the (KL, gold) curves. (The slowest cell.)

# %%
import textenv
from agents import ALGORITHMS
from agents.evaluation import EvalSet, Evaluator

reference = textenv.load_reference()  # the start of every run: KL 0
sft_gold = Evaluator(reference)(reference, EvalSet("eval", 1), win_rate=False)["eval/gold_mean"]
SEEDS, BUDGET = range(1, 6), 3_000
finals, curves = {}, {}
for algo in ("reinforce", "rloo"):
    config_type, train = ALGORITHMS[algo]
    finals[algo], curves[algo] = [], []
    for seed in SEEDS:
        result = train(config_type(seed=seed, total_env_steps=BUDGET, eval_every=2,
                                   eval_samples=1, progress=False, tensorboard=False,
                                   threads=2, run_dir=f"runs/{algo}_{seed}"))
        finals[algo].append(result["final"]["eval/gold_mean"])
        curves[algo].append([(0.0, sft_gold)] + [(r["eval/kl"], r["eval/gold_mean"])
                                                 for r in result["history"] if "eval/kl" in r])
        print(f"{algo:>9} seed {seed}: gold {finals[algo][-1]:.3f}  "
              f"KL {result['final']['eval/kl']:.2f}")
    finals[algo] = np.array(finals[algo])

# %% [markdown]
# **What two seeds would have told you.** Pick seeds 1 and 2 only, and compare the means.
# Then the whole picture: mean and IQM with bootstrap intervals, the probability that
# REINFORCE beats RLOO, and gold at matched KL.

# %%
for first in (1, 3):
    two = {a: finals[a][first - 1: first + 1].mean() for a in finals}
    print(f"seeds {first},{first + 1} only: " + ", ".join(f"{a} {v:.3f}" for a, v in two.items()))
print()
for algo, x in finals.items():
    lo, hi = bootstrap_ci(x)
    lo_i, hi_i = bootstrap_ci(x, iqm)
    print(f"{algo:>9}: mean {x.mean():.3f} [{lo:.3f}, {hi:.3f}]   IQM {iqm(x):.3f} "
          f"[{lo_i:.3f}, {hi_i:.3f}]   seeds {np.round(x, 3).tolist()}")
print(f"P(REINFORCE > RLOO) = "
      f"{probability_of_improvement(finals['reinforce'], finals['rloo']):.2f}")
KLS = (0.1, 0.2, 0.3)
matched = {a: np.array([[gold_at_kl(c, k) for k in KLS] for c in curves[a]]) for a in curves}
for algo, m in matched.items():
    print(f"{algo:>9}: gold at KL {KLS}: " + "  ".join(
        f"{np.nanmean(m[:, i]):.3f} ({np.isfinite(m[:, i]).sum()} runs)"
        for i in range(len(KLS))))

# %%
fig, axes = plt.subplots(1, 2, figsize=(11, 4))
for i, (algo, x) in enumerate(finals.items()):
    lo, hi = bootstrap_ci(x, iqm)
    axes[0].scatter(np.full(len(x), i) + np.linspace(-0.08, 0.08, len(x)), x, alpha=0.6,
                    label="runs" if i == 0 else None, color="gray")
    axes[0].errorbar(i + 0.25, iqm(x), yerr=[[iqm(x) - lo], [hi - iqm(x)]], fmt="o",
                     capsize=4, color="black", label="IQM, 95% CI" if i == 0 else None)
    for curve in curves[algo]:
        kl, gold = np.array(curve).T
        axes[1].plot(kl, gold, marker=".", alpha=0.6, color=f"C{i}",
                     label=algo if curve is curves[algo][0] else None)
axes[0].set(xticks=range(len(finals)), xticklabels=list(finals), ylabel="final held-out gold",
            title="Final gold: runs and IQM with 95% bootstrap CI")
axes[0].legend(fontsize=8)
for k in KLS:
    axes[1].axvline(k, color="gray", ls=":", lw=0.8)
axes[1].set(xlabel="KL to the reference (nats)", ylabel="held-out gold",
            title="Gold against KL along each run")
axes[1].legend(fontsize=8)
fig.tight_layout()
fig.savefig("lab6_comparison.png", dpi=80)

# %% [markdown]
# **Expected plot** (from the solution run):
#
# ![expected: overlapping intervals, curves against KL](images/lab6_comparison.png)
#
# The full-size version: `textenv compare` (8 algorithms x 20 seeds, rliable aggregates,
# KL-matched gold, over-optimisation fits; docs/results.md).
#
# ## Questions
#
# 1. Do the two algorithms' intervals overlap? What would you report: "A beats B", or
#    something else? How many seeds would you need to separate them?
# 2. Why is the IQM's interval usually wider than the mean's with 5 seeds, but the IQM
#    preferred with 20?
# 3. An algorithm ends at a higher gold *and* a higher KL. Is it better? What does the
#    KL-matched view add?

# %% tags=["solution"]
# Answers (teacher's version):
# 1. In the solution run REINFORCE's IQM interval sits just above RLOO's at this small
#    budget (3,000 env steps), yet a different pair of seeds can reverse the order of the
#    two-seed means. Report the budget, the seeds, the intervals and P(X > Y), and only
#    "A beats B at this budget" when the intervals separate; they shrink like 1/sqrt(n),
#    so resolving a difference of about one seed-standard-deviation takes 15-20 seeds.
# 2. With 5 runs the IQM averages only the middle ~2.5 runs, so it has more variance;
#    with 20 it averages 10 and is robust to the odd crashed or lucky seed.
# 3. Not necessarily: more KL buys more reward at first for any algorithm. Compare gold
#    at the same KL (or the area under the gold-vs-KL frontier) to see which one uses its
#    KL budget better.
