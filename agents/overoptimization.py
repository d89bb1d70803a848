"""Reward-model over-optimisation, measured: LM-PPO with and without the KL penalty.

Without the penalty the policy is free to exploit the learned reward model: its learned
reward keeps rising while the gold score (the ground truth the reward model was trained to
imitate) stalls or falls. Writes learning curves (gold | learned reward | KL), a
gold-vs-KL frontier, a markdown table and results.json to --out-dir.

    textenv overoptimization --total-env-steps 150000
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path

from agents.plots import plot_frontier, plot_learning_curves
from agents.ppo import PPOConfig, train
from textenv.storage import atomic_write, write_json


@dataclass
class OveroptimizationConfig:
    """LM-PPO with and without the KL penalty, same budget and seed: does the gold score
    follow the learned reward once the policy may drift freely?"""

    out_dir: str = "runs/overoptimization"
    """Where the runs, plots and table go."""
    total_env_steps: int = 150_000
    """Budget of each run."""
    seed: int = 1
    """Seed of both runs."""
    eval_every: int = 5
    """Held-out evaluation every this many iterations."""
    ppo: PPOConfig = field(default_factory=PPOConfig)
    """Shared LM-PPO settings, task included (the KL settings are overridden per run)."""


def main(cfg: OveroptimizationConfig) -> str:
    """`textenv overoptimization`: both runs, plots, table; returns the markdown table."""
    out = Path(cfg.out_dir)
    runs = {
        "KL penalty (adaptive beta)": {},
        "no KL penalty (beta = 0)": {"init_kl_coef": 0.0, "adaptive_kl": False},
    }
    results = {}
    for name, overrides in runs.items():
        run_cfg = replace(cfg.ppo, seed=cfg.seed, total_env_steps=cfg.total_env_steps,
                          eval_every=cfg.eval_every,
                          run_dir=str(out / name.split(" ")[0].lower()), **overrides)
        print(f"== {name}")
        results[name] = train(run_cfg)
    plot_learning_curves({n: [r["history"]] for n, r in results.items()},
                         out / "learning_curves.png",
                         keys=("env/gold_mean", "env/reward_mean", "objective/kl"),
                         title="LM-PPO on TextGen-v0: with and without the KL penalty")
    plot_frontier({n: [(row["eval/kl"], row["eval/gold_mean"]) for row in r["history"]
                       if "eval/kl" in row] for n, r in results.items()}, out / "frontier.png")
    lines = ["| run | held-out gold | learned reward | KL to ref (nats) | "
             "peak held-out gold (at KL) |", "|---|---|---|---|---|"]
    for name, r in results.items():
        f = r["final"]
        evals = [row for row in r["history"] if "eval/gold_mean" in row]
        peak = max(evals, key=lambda row: row["eval/gold_mean"]) if evals else f
        lines.append(f"| {name} | {f['eval/gold_mean']:.3f} | {f['eval/reward_mean']:.3f} | "
                     f"{f['eval/kl']:.2f} | {peak['eval/gold_mean']:.3f} "
                     f"({peak['eval/kl']:.2f}) |")
    table = "\n".join(lines)
    atomic_write(out / "table.md", table + "\n")
    write_json(out / "results.json",
               {n: {"final": r["final"], "history": r["history"]} for n, r in results.items()})
    print("\n" + table + f"\n\nplots: {out}/learning_curves.png, {out}/frontier.png")
    return table
