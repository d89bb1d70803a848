"""`make demo`: train LM-PPO on TextGen-v0 for a few minutes and show what changed.

Prints responses to the same held-out prompts before and after training, with their
gold and learned-reward scores, a before/after table, and writes a learning-curve PNG.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from agents.evaluation import EvalSet
from agents.plots import plot_learning_curves
from agents.ppo import PPOConfig, train
from agents.training import setup
from textenv.storage import write_json


@dataclass
class DemoConfig:
    ppo: PPOConfig = field(default_factory=lambda: PPOConfig(
        run_dir="runs/demo", total_env_steps=100_000, eval_every=5, checkpoint_every=25))
    """LM-PPO settings (the defaults take a few minutes on a 2-core CPU)."""
    show: int = 6
    """Held-out prompts to show before/after samples for."""


def main(cfg: DemoConfig) -> dict:
    run = train(cfg.ppo)
    history = run["history"]
    evals = [r for r in history if "eval/gold_mean" in r]
    before = _first_eval(cfg.ppo)
    after = run["final"]
    png = plot_learning_curves({"LM-PPO": [history]}, Path(cfg.ppo.run_dir) / "learning_curve.png",
                               title=f"LM-PPO on TextGen-v0 ({cfg.ppo.task})")
    print("\nSame held-out prompts, before (SFT) and after LM-PPO:")
    pairs = list(zip(before["samples"], run["samples"]))
    step = max(1, len(pairs) // cfg.show)  # spread over the split: one sample per prompt
    for (p, r0, g0, s0), (_, r1, g1, s1) in pairs[::step][:cfg.show]:
        print(f"\nprompt : {p}")
        print(f"  SFT  [gold {g0:.2f} | reward {s0:+.2f}] {r0}")
        print(f"  PPO  [gold {g1:.2f} | reward {s1:+.2f}] {r1}")
    rows = [("gold score (mean)", before["eval/gold_mean"], after["eval/gold_mean"]),
            ("learned reward (mean)", before["eval/reward_mean"], after["eval/reward_mean"]),
            ("KL to reference (nats)", before["eval/kl"], after["eval/kl"]),
            ("EOS rate", before["eval/eos_rate"], after["eval/eos_rate"]),
            ("win rate against SFT (gold)", 0.5, after["eval/win_rate"])]
    print("\n| metric | SFT (before) | LM-PPO (after) |\n|---|---|---|")
    for name, b, a in rows:
        print(f"| {name} | {b:.3f} | {a:.3f} |")
    print(f"\n{len(evals)} evaluations logged in {run['run_dir']}/metrics.csv")
    print(f"learning curve: {png}")
    summary = {"before": {k: v for k, v in before.items() if k != "samples"}, "after": after}
    write_json(Path(cfg.ppo.run_dir) / "demo_summary.json", summary)
    return summary


def _first_eval(cfg: PPOConfig) -> dict:
    """The SFT policy on the same fixed evaluation as the final one (its samples are the
    win-rate baseline, drawn once)."""
    s = setup(cfg)
    return s.evaluator(s.reference, EvalSet("eval", cfg.eval_samples))
