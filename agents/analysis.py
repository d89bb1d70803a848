"""Statistics of a comparison: aggregates with confidence intervals, KL-matched gold, and the
over-optimisation fits of Gao et al. (2022).

Aggregates come from `rliable` (Agarwal et al. 2021): the interquartile mean (IQM), mean and
median over runs with stratified-bootstrap 95% intervals, the probability that one
algorithm improves on another (with its interval), and performance profiles.

KL-matched comparison: every run leaves a curve of (KL to the reference, gold) points, one
per evaluation. `gold_at_kl` reads the gold a run had when its KL first reached a given
value (linear interpolation between the evaluations around it); `frontier_auc` is the area
under the run's gold-vs-KL frontier (best gold reached at KL <= x) over [0, kl_max].

Over-optimisation (Gao et al. 2022), with d = sqrt(KL) and R the reward gained over the
initial policy:

    best-of-n:  R_bon(d) = d (alpha - beta d),        KL_bon = log n - (n - 1) / n
    RL:         R_RL(d)  = d (alpha - beta log d)

Both forms are linear in (alpha, beta), so they are fitted by least squares; their
intervals come from a bootstrap over seeds.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence

import numpy as np

BOOTSTRAP_REPS = 5000


# ---- rliable aggregates ----------------------------------------------------------------------
def _interval_estimates(scores: dict, func, reps: int, seed: int):
    """rliable's stratified bootstrap with a fixed seed (rliable hands `arch` a
    RandomState, which arch now warns about: a fixed seed is what we want)."""
    from rliable import library as rly

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="random_state is deprecated")
        return rly.get_interval_estimates(scores, func, reps=reps,
                                          random_state=np.random.RandomState(seed))


def aggregate(scores: dict[str, np.ndarray], reps: int = BOOTSTRAP_REPS, seed: int = 0) -> dict:
    """scores[algo]: (runs, tasks). -> {algo: {"iqm", "iqm_ci_low", "iqm_ci_high", "mean",
    ..., "median", ..., "std"}} with stratified-bootstrap 95% intervals (rliable)."""
    from rliable import metrics

    def aggregates(x: np.ndarray) -> np.ndarray:
        return np.array([metrics.aggregate_iqm(x), metrics.aggregate_mean(x),
                         metrics.aggregate_median(x)])

    point, interval = _interval_estimates(scores, aggregates, reps, seed)
    out = {}
    for algo, x in scores.items():
        row = {}
        for i, name in enumerate(("iqm", "mean", "median")):
            row[name] = float(point[algo][i])
            row[f"{name}_ci_low"], row[f"{name}_ci_high"] = map(float, interval[algo][:, i])
        row["std"] = float(np.std(x, ddof=1)) if x.size > 1 else float("nan")  # sample std
        row["runs"] = int(x.shape[0])
        out[algo] = row
    return out


def probability_of_improvement(scores: dict[str, np.ndarray], reps: int = BOOTSTRAP_REPS,
                               seed: int = 0) -> list[dict]:
    """P(X > Y) for every ordered pair of algorithms (ties count half), with a 95%
    stratified-bootstrap interval: [{"x", "y", "p", "ci_low", "ci_high"}, ...]."""
    from rliable import metrics

    pairs = {f"{x},{y}": (scores[x], scores[y]) for x in scores for y in scores if x != y}
    point, interval = _interval_estimates(pairs, metrics.probability_of_improvement, reps, seed)
    return [{"x": key.split(",")[0], "y": key.split(",")[1], "p": float(point[key]),
             "ci_low": float(np.ravel(interval[key])[0]),
             "ci_high": float(np.ravel(interval[key])[1])}
            for key in pairs]


def performance_profiles(scores: dict[str, np.ndarray], taus: np.ndarray,
                         reps: int = 2000) -> tuple[dict, dict]:
    """Fraction of runs scoring above each tau, with bootstrap intervals (rliable)."""
    from rliable import library as rly

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="random_state is deprecated")
        return rly.create_performance_profile(scores, taus, reps=reps)


# ---- KL-matched comparison -------------------------------------------------------------------
def gold_at_kl(curve: Sequence[tuple[float, float]], kl: float) -> float:
    """The gold of a run when its KL first reached `kl`: linear interpolation between the two
    evaluations around that point of the run; NaN if the run never got there.
    `curve`: (kl, gold) in the run's order, starting from the initial policy."""
    for (k0, g0), (k1, g1) in zip(curve, curve[1:]):
        if k0 <= kl <= k1 or k1 <= kl <= k0:
            if k1 == k0:
                return float(g1)
            return float(g0 + (g1 - g0) * (kl - k0) / (k1 - k0))
    return float("nan")


def frontier_auc(curve: Sequence[tuple[float, float]], kl_max: float = 4.0,
                 points: int = 401) -> float:
    """Mean over x in [0, kl_max] of the run's frontier: the best gold it reached at a KL
    <= x (a step function). Higher is better gold for the KL spent."""
    kls = np.array([k for k, _ in curve])
    golds = np.array([g for _, g in curve])
    xs = np.linspace(0.0, kl_max, points)
    frontier = [golds[kls <= x].max() if (kls <= x).any() else np.nan for x in xs]
    return float(np.nanmean(frontier))


# ---- over-optimisation fits (Gao et al. 2022) ------------------------------------------------
def fit_bon(d: np.ndarray, gain: np.ndarray) -> tuple[float, float]:
    """Least squares of gain = alpha d - beta d^2. -> (alpha, beta)."""
    design = np.stack([d, -d * d], 1)  # (P, 2)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    return float(alpha), float(beta)


def fit_rl(d: np.ndarray, gain: np.ndarray) -> tuple[float, float]:
    """Least squares of gain = alpha d - beta d log d (points with d > 0). -> (alpha, beta)."""
    keep = d > 0
    d, gain = d[keep], gain[keep]
    design = np.stack([d, -d * np.log(d)], 1)  # (P, 2)
    (alpha, beta), *_ = np.linalg.lstsq(design, gain, rcond=None)
    return float(alpha), float(beta)


def fit_with_ci(runs: list[np.ndarray], form: str, reps: int = 2000, seed: int = 0) -> dict:
    """Fit `form` ("bon" or "rl") to the pooled (d, gain) points of `runs` (each an array
    (P, 2) of one seed), with 95% percentile intervals from a bootstrap over the runs."""
    fit = fit_bon if form == "bon" else fit_rl

    def pooled(chosen) -> tuple[float, float]:
        points = np.concatenate([runs[i] for i in chosen])
        return fit(points[:, 0], points[:, 1])

    alpha, beta = pooled(range(len(runs)))
    rng = np.random.default_rng(seed)
    boot = np.array([pooled(rng.integers(0, len(runs), len(runs))) for _ in range(reps)])
    low, high = np.percentile(boot, [2.5, 97.5], axis=0)
    return {"alpha": alpha, "alpha_ci_low": float(low[0]), "alpha_ci_high": float(high[0]),
            "beta": beta, "beta_ci_low": float(low[1]), "beta_ci_high": float(high[1]),
            "runs": len(runs), "points": int(sum(len(r) for r in runs))}


def gao_curve(form: str, alpha: float, beta: float, d: np.ndarray) -> np.ndarray:
    """The fitted gain at d."""
    return d * (alpha - beta * d) if form == "bon" else d * (alpha - beta * np.log(d))
