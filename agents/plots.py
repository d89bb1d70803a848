"""Matplotlib figures: learning curves and the gold-vs-KL over-optimisation frontier."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")  # files only, no display needed
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


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
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
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
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_frontier(points: dict[str, list[tuple[float, float]]], path: str | Path,
                  title: str = "Gold score against KL to the reference") -> Path:
    """Gao et al. (2022): gold score as a function of KL(policy || reference).
    `points[name]` = [(kl, gold), ...] e.g. every evaluation of every seed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig, ax = plt.subplots(figsize=(6, 4.5))
    for name, pts in points.items():
        if not pts:
            continue
        kl, gold = np.array(pts).T
        # Points, not a line: they come from several seeds and evaluations, in no order.
        ax.scatter(np.sqrt(np.maximum(kl, 0)), gold, s=14, label=name, alpha=0.7)
    ax.set_xlabel("sqrt KL(policy || reference)  (sqrt nats)")
    ax.set_ylabel("gold score")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
