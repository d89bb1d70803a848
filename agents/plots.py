"""Matplotlib figures: learning curves and the gold-vs-KL over-optimisation frontier."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from textenv.storage import atomic_write  # noqa: E402


def _finish(fig, ax, path: Path, xlabel: str, ylabel: str, title: str = "") -> Path:
    """Label, grid and legend one axes, then write the figure atomically as PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    if title:
        ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, path)


def _save(fig, path: Path) -> Path:
    path = Path(path)
    fig.tight_layout()
    atomic_write(path, lambda tmp: fig.savefig(tmp, dpi=110, format="png"))
    plt.close(fig)
    return path


def _curve(histories: list[list[dict]], key: str):
    """Mean and std over seeds of `key` against env steps (rows without the key skipped)."""
    xs, ys = [], []
    for h in histories:
        rows = [r for r in h if key in r and np.isfinite(r[key])]
        xs.append(np.array([r["charts/env_steps"] for r in rows]))
        ys.append(np.array([r[key] for r in rows]))
    n = min(len(y) for y in ys) if ys else 0
    if n == 0:
        return None
    x = np.mean([x[:n] for x in xs], 0)
    y = np.stack([y[:n] for y in ys])
    return x, y.mean(0), y.std(0)


def plot_learning_curves(runs: dict[str, list[list[dict]]], path: str | Path,
                         title: str = "", keys=("env/gold_mean", "env/reward_mean")) -> Path:
    """One panel per metric; one line (mean ± std over seeds) per algorithm."""
    labels = {"env/gold_mean": "gold score (ground truth)",
              "env/reward_mean": "learned reward (reward model)",
              "objective/kl": "KL to reference (nats)"}
    fig, axes = plt.subplots(1, len(keys), figsize=(5.5 * len(keys), 4))
    axes = np.atleast_1d(axes)
    for ax, key in zip(axes, keys):
        for name, histories in runs.items():
            c = _curve(histories, key)
            if c is None:
                continue
            x, m, s = c
            ax.plot(x, m, label=name)
            ax.fill_between(x, m - s, m + s, alpha=0.2)
        ax.set_xlabel("env steps (generated tokens)")
        ax.set_ylabel(labels.get(key, key))
        ax.grid(alpha=0.3)
    axes[0].legend()
    if title:
        fig.suptitle(title)
    return _save(fig, path)


def plot_frontier(points: dict[str, list[tuple[float, float]]], path: str | Path,
                  title: str = "Gold score against KL to the reference") -> Path:
    """Gao et al. (2022): gold score as a function of KL(policy || reference).
    `points[name]` = [(kl, gold), ...] e.g. every evaluation of every seed."""
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, pts in points.items():
        if not pts:
            continue
        kl, gold = np.array(pts).T
        # Points, not a line: they come from several seeds and evaluations, in no order.
        ax.scatter(np.sqrt(np.maximum(kl, 0)), gold, s=14, label=name, alpha=0.7)
    return _finish(fig, ax, path, "sqrt KL(policy || reference)  (sqrt nats)", "gold score",
                   title)


def plot_frontier_with_ci(curves: dict[str, list[list[tuple[float, float]]]], path: str | Path,
                          title: str = "Gold against KL to the reference",
                          kl_max: float = 4.0) -> Path:
    """The KL-matched view: for each algorithm, the gold its runs had when their KL first
    reached x (interpolated along each run), mean and 95% interval over the runs that got
    there, against sqrt(KL)."""
    from agents.analysis import gold_at_kl

    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    xs = np.linspace(0.0, kl_max, 41)
    for name, runs in curves.items():
        values = np.array([[gold_at_kl(c, x) for x in xs] for c in runs])  # (runs, X)
        count = np.isfinite(values).sum(0)
        keep = count >= max(2, len(runs) // 2)  # a point needs half the runs behind it
        if not keep.any():
            continue
        mean = np.nanmean(values[:, keep], 0)
        half = 1.96 * np.nanstd(values[:, keep], 0, ddof=1) / np.sqrt(count[keep])
        x = np.sqrt(xs[keep])
        ax.plot(x, mean, label=name)
        ax.fill_between(x, mean - half, mean + half, alpha=0.2)
    return _finish(fig, ax, path, "sqrt KL(policy || reference)  (sqrt nats)", "gold score",
                   title)


def plot_performance_profiles(scores: dict[str, np.ndarray], path: str | Path,
                              reps: int = 2000) -> Path:
    """rliable's performance profiles: the fraction of runs whose final gold exceeds tau."""
    from agents.analysis import performance_profiles

    every = np.concatenate([v.ravel() for v in scores.values()])
    taus = np.linspace(every.min() - 0.02, every.max() + 0.02, 101)  # where the runs differ
    profiles, cis = performance_profiles(scores, taus, reps)
    fig, ax = plt.subplots(figsize=(6.5, 4.5))
    for name, profile in profiles.items():
        ax.plot(taus, profile, label=name)
        ax.fill_between(taus, cis[name][0], cis[name][1], alpha=0.2)
    return _finish(fig, ax, path, "gold score tau", "fraction of runs with final gold > tau",
                   "Performance profiles (95% bootstrap intervals)")


def plot_probability_of_improvement(pairs: list[dict], path: str | Path) -> Path:
    """P(X > Y) with its 95% interval for every ordered pair, one row each."""
    fig, ax = plt.subplots(figsize=(6.5, 0.3 * len(pairs) + 1.2))
    for i, p in enumerate(pairs):
        ax.plot([p["ci_low"], p["ci_high"]], [i, i], color="tab:blue", lw=4, alpha=0.5)
        ax.plot(p["p"], i, "o", color="tab:blue")
    ax.axvline(0.5, color="gray", ls="--", lw=1)
    ax.set_yticks(range(len(pairs)), [f"P({p['x']} > {p['y']})" for p in pairs])
    ax.set_xlim(0, 1)
    ax.set_xlabel("probability of improvement (final gold)")
    ax.grid(alpha=0.3, axis="x")
    return _save(fig, path)


def plot_gao_fits(task_runs: list[dict], task_report: dict, cfg_overoptimization, path) -> Path:
    """Gain over the SFT policy against d = sqrt(KL): best-of-k points of the SFT policy
    and RL points (the over-optimisation runs), with the fitted Gao et al. (2022) curves,
    for gold and for the learned (proxy) reward."""
    from agents.analysis import gao_curve

    over = task_report["overoptimization"]
    fits, bon = over["fits"], np.array(over["bon_points"])
    fig, axes = plt.subplots(1, 2, figsize=(11, 4.2))
    for ax, reward, col, base in ((axes[0], "gold", 1, task_report["sft_gold"]),
                                  (axes[1], "proxy", 2, task_report["sft_reward"])):
        d_max = 0.1
        if len(bon):
            ax.scatter(bon[:, 0], bon[:, col], s=10, alpha=0.6, label="best-of-k (SFT)")
            d_max = max(d_max, bon[:, 0].max())
        key = "eval/gold_mean" if reward == "gold" else "eval/reward_mean"
        rl = [(np.sqrt(max(row["eval/kl"], 0)), row[key] - base) for r in task_runs
              if r["algo"] in cfg_overoptimization for row in r["history"] if "eval/kl" in row]
        if rl:
            d, g = np.array(rl).T
            ax.scatter(d, g, s=8, alpha=0.4, label="RL (" + ", ".join(cfg_overoptimization) + ")")
            d_max = max(d_max, d.max())
        xs = np.linspace(1e-3, d_max, 200)
        for form in ("bon", "rl"):
            fit = fits.get(f"{form}_{reward}")
            if fit:
                ax.plot(xs, gao_curve(form, fit["alpha"], fit["beta"], xs),
                        label=f"R_{form} fit: alpha={fit['alpha']:.2f}, beta={fit['beta']:.2f}")
        ax.set_xlabel("d = sqrt KL (sqrt nats)")
        ax.set_ylabel(f"{'gold' if reward == 'gold' else 'learned (proxy)'} gain over SFT")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=8)
    fig.suptitle("Over-optimisation (Gao et al. 2022 functional forms)")
    return _save(fig, path)
