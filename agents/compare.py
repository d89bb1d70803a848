"""Compare algorithms x seeds on TextGen-v0 under one equal budget of env steps.

Writes to --out-dir: results.csv and results.json (one row per run), table.md (mean ± std
over seeds), learning_curves.png (gold and learned reward against env steps) and
frontier.png (gold score against KL to the reference, Gao et al. 2022).

    textenv compare                                    # everything, 3 seeds
    textenv compare --algos ppo rloo --seeds 1 --total-env-steps 20000
"""

from __future__ import annotations

import csv
import io
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np

from agents import ALGORITHMS
from agents.plots import plot_frontier, plot_learning_curves
from textenv.runlog import read_metrics_csv
from textenv.storage import atomic_write, read_json, write_json

COLUMNS = [("eval/gold_mean", "gold score"), ("eval/reward_mean", "learned reward"),
           ("eval/kl", "KL to ref (nats)"), ("charts/wall_clock", "wall-clock (s)"),
           ("tokens_per_second", "tokens/s")]


@dataclass
class CompareConfig:
    """Algorithms x seeds on TextGen-v0 at an equal budget of env steps: a table of mean ±
    std over seeds, learning curves and the gold-vs-KL frontier."""

    algos: tuple[str, ...] = ("ppo", "reinforce", "rloo", "grpo", "best-of-n", "sb3-ppo")
    """Algorithms to run (names from agents.ALGORITHMS)."""
    seeds: tuple[int, ...] = (1, 2, 3)
    """Seeds per algorithm."""
    task: str = "reviews"
    """Task every run trains and is evaluated on."""
    total_env_steps: int = 60_000
    """Equal budget for every training algorithm (best-of-n spends its own n x samples)."""
    out_dir: str = "runs/compare"
    """Where results, table and plots go."""
    eval_every: int = 5
    """Held-out evaluation every this many iterations (points of the frontier plot)."""
    eval_prompts: int = 128
    """Held-out prompts per evaluation."""
    progress: bool = True
    """Progress bars."""
    reuse: bool = False
    """Reuse runs already finished in out_dir (final_eval.json + metrics.csv) instead of
    training them again: resume an interrupted comparison or rebuild its table."""


def run_all(cfg: CompareConfig) -> list[dict]:
    """Train (or reuse) every algorithm x seed; one dict per run: its final evaluation,
    "algo", "seed", "tokens_per_second" and "history" (the metric rows)."""
    out = Path(cfg.out_dir)
    unknown = [a for a in cfg.algos if a not in ALGORITHMS]
    if unknown:
        raise ValueError(f"unknown algorithms {unknown}; valid: {', '.join(ALGORITHMS)}")
    results = []
    for algo in cfg.algos:
        cls, train = ALGORITHMS[algo]
        for seed in cfg.seeds:
            run_cfg = replace(cls(), seed=seed, task=cfg.task,
                              total_env_steps=cfg.total_env_steps,
                              run_dir=str(out / algo / f"seed{seed}"), eval_every=cfg.eval_every,
                              eval_prompts=cfg.eval_prompts, progress=cfg.progress,
                              tensorboard=False)
            run_dir = Path(run_cfg.run_dir)
            if cfg.reuse and (run_dir / "final_eval.json").exists():
                print(f"== {algo} seed {seed}: reusing {run_dir}")
                metrics = run_dir / "metrics.csv"
                r = {"final": read_json(run_dir / "final_eval.json", "final evaluation"),
                     "history": read_metrics_csv(metrics) if metrics.exists() else []}
            else:
                print(f"== {algo} seed {seed}")
                r = train(run_cfg)
            final = dict(r["final"])
            wall = final.get("charts/wall_clock", float("nan"))
            final["tokens_per_second"] = final.get("charts/env_steps", 0) / wall if wall else 0
            results.append({"algo": algo, "seed": seed, **final, "history": r["history"]})
    return results


def write_outputs(results: list[dict], out: Path) -> str:
    """results.csv, results.json, table.md and the two plots; returns the markdown table."""
    flat = [{k: v for k, v in r.items() if k != "history"} for r in results]
    keys = list(dict.fromkeys(k for r in flat for k in r))
    text = io.StringIO()
    w = csv.DictWriter(text, fieldnames=keys)
    w.writeheader()
    w.writerows(flat)
    atomic_write(out / "results.csv", text.getvalue())
    write_json(out / "results.json", results)

    algos = list(dict.fromkeys(r["algo"] for r in results))
    lines = ["| algorithm | seeds | env steps | " + " | ".join(n for _, n in COLUMNS) + " |",
             "|---|---|---|" + "---|" * len(COLUMNS)]
    for a in algos:
        rs = [r for r in flat if r["algo"] == a]
        cells = []
        for key, _ in COLUMNS:
            v = np.array([r.get(key, np.nan) for r in rs], dtype=float)
            cells.append(f"{v.mean():.3f} ± {v.std():.3f}" if key.startswith("eval")
                         else f"{v.mean():.0f} ± {v.std():.0f}")
        steps = np.mean([r.get("charts/env_steps", np.nan) for r in rs])
        lines.append(f"| {a} | {len(rs)} | {steps:.0f} | " + " | ".join(cells) + " |")
    table = "\n".join(lines)
    atomic_write(out / "table.md", table + "\n")

    curves = {a: [r["history"] for r in results if r["algo"] == a and r["history"]]
              for a in algos}
    plot_learning_curves({a: h for a, h in curves.items() if h}, out / "learning_curves.png",
                         title="TextGen-v0: equal env-step budget, mean ± std over seeds")
    frontier = {}
    for a in algos:
        pts = [(row["eval/kl"], row["eval/gold_mean"]) for r in results if r["algo"] == a
               for row in r["history"] if "eval/kl" in row]
        pts += [(r["eval/kl"], r["eval/gold_mean"]) for r in results if r["algo"] == a]
        frontier[a] = pts
    plot_frontier(frontier, out / "frontier.png")
    return table


def main(cfg: CompareConfig) -> str:
    """`textenv compare`: run everything, write the outputs, print the table."""
    table = write_outputs(run_all(cfg), Path(cfg.out_dir))
    print("\n" + table)
    print(f"\nwrote {cfg.out_dir}/results.csv, results.json, table.md, "
          f"learning_curves.png, frontier.png")
    return table
