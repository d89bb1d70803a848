"""stable-baselines3 on TextGen-v0: does SB3 raise the mean reward over its starting policy?

Runs SB3 `PPO` (and optionally `A2C`, sb3-contrib `MaskablePPO`) through the `agents.sb3`
features extractor, starting from the SFT policy, and evaluates before and after on the
same held-out prompts and sampling seed. Prints a markdown table; writes it and JSON.

    python scripts/sb3_baseline.py                         # PPO, the stated setting
    python scripts/sb3_baseline.py --algos ppo a2c maskable_ppo
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import tyro

from agents.common import evaluate, setup
from agents.sb3 import SB3Config, train


@dataclass
class Args:
    algos: tuple[str, ...] = ("ppo",)
    """SB3 algorithms: ppo, a2c, maskable_ppo."""
    total_env_steps: int = 6000
    """Env steps per algorithm."""
    seed: int = 1
    """Seed."""
    out_dir: str = "runs/sb3_baseline"
    """Where runs, table.md and results.json go."""


def run(args: Args) -> tuple[str, dict]:
    base = SB3Config(total_env_steps=args.total_env_steps, seed=args.seed, tensorboard=False)
    s = setup(base)
    prompts = s.task.eval_prompts(max(base.eval_prompts, base.num_envs), seed=args.seed + 100)
    before = evaluate(s.reference, s.reference, s.envs, prompts,
                      max_new_tokens=base.max_new_tokens, temperature=1.0,
                      pad_id=s.tokenizer.pad_id, seed=args.seed + 200)
    results = {"SFT (start)": {k: v for k, v in before.items() if k != "samples"}}
    for algo in args.algos:
        cfg = replace(base, algo=algo, run_dir=str(Path(args.out_dir) / algo))
        results[f"SB3 {algo}"] = train(cfg)["final"]
    lines = ["| policy | env steps | learned reward | gold score | KL to SFT (nats) "
             "| wall-clock (s) |", "|---|---|---|---|---|---|"]
    for name, f in results.items():
        lines.append(f"| {name} | {f.get('charts/env_steps', 0)} | {f['eval/reward_mean']:.3f} | "
                     f"{f['eval/gold_mean']:.3f} | {f['eval/kl']:.3f} | "
                     f"{f.get('charts/wall_clock', 0):.0f} |")
    table = "\n".join(lines)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    (out / "table.md").write_text(table + "\n")
    (out / "results.json").write_text(json.dumps(results, indent=1))
    return table, results


if __name__ == "__main__":
    table, _ = run(tyro.cli(Args))
    print(table)
