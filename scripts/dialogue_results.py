"""SFT vs LM-PPO on the `dialogue` task's held-out games: success rate, mean agent turns and
gold, on the eval split (held-out games of items seen in training) and the test split
(items never seen by any training stage), over several seeds.

    python scripts/dialogue_results.py --seeds 1 2 3 --total-env-steps 30000

Each seed trains LM-PPO from the shipped SFT policy against the learned reward model
(`textenv ppo --task dialogue --max-new-tokens 65 ...`), then the SFT policy and every PPO
policy play every prompt of each split `samples_per_prompt` times (the same slots and
sampling seed for all; hidden preferences drawn among the split's games). Writes a JSON
file of the numbers (mean and standard error over seeds for PPO).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch
import tyro

from agents import ppo
from agents.evaluation import EvalSet
from agents.training import shared_evaluator
from textenv.assets import resolve_assets_dir
from textenv.storage import write_json
from textenv.tasks import make_task


@dataclass
class Args:
    seeds: tuple[int, ...] = (1, 2, 3)
    """PPO seeds (one run each)."""
    total_env_steps: int = 30_000
    """PPO budget per seed, in env steps (the agent's tokens)."""
    samples_per_prompt: int = 4
    """Dialogues per prompt of each evaluated split."""
    run_dir: Path = Path("runs/dialogue_ppo")
    """PPO runs go to RUN_DIR/seed_S."""
    out: Path = Path("docs/results/dialogue.json")
    """Where to write the numbers."""
    threads: int = 1
    """torch threads."""
    learning_rate: float | None = None
    """PPO learning rate (default: PPOConfig's)."""
    init_kl_coef: float | None = None
    """PPO's initial KL coefficient beta (default: PPOConfig's)."""


def dialogue_metrics(samples, task) -> dict[str, float]:
    """Success rate, mean agent turns and mean gold of (prompt, response, gold, reward)."""
    success = [task.gold_components(p, r)["success"] for p, r, _, _ in samples]
    turns = [sum(role == "agent" for role, _ in task.split_transcript(r)) for _, r, _, _ in samples]
    return {"success_rate": float(np.mean(success)), "mean_turns": float(np.mean(turns)),
            "gold_mean": float(np.mean([g for _, _, g, _ in samples])), "dialogues": len(samples)}


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    task = make_task("dialogue")
    base = ppo.PPOConfig(task="dialogue", max_new_tokens=65, total_env_steps=args.total_env_steps,
                         eval_every=0, eval_samples=1, threads=args.threads, progress=False,
                         tensorboard=False, device="cpu")
    for name in ("learning_rate", "init_kl_coef"):  # set only when asked: defaults stay PPO's
        if getattr(args, name) is not None:
            base = replace(base, **{name: getattr(args, name)})
    evaluator = shared_evaluator(str(resolve_assets_dir(None, "dialogue")), "dialogue", 65,
                                 base.temperature)
    splits = ("eval", "test")
    sets = {s: EvalSet(split=s, samples_per_prompt=args.samples_per_prompt) for s in splits}
    results: dict = {"sft": {}, "ppo_per_seed": {}, "ppo": {}, "config": {
        "seeds": list(args.seeds), "total_env_steps": args.total_env_steps,
        "samples_per_prompt": args.samples_per_prompt,
        "learning_rate": base.learning_rate, "init_kl_coef": base.init_kl_coef}}
    for s in splits:
        results["sft"][s] = dialogue_metrics(evaluator(evaluator.reference, sets[s],
                                                       win_rate=False)["samples"], task)
    for seed in args.seeds:
        cfg = replace(base, seed=seed, run_dir=str(args.run_dir / f"seed_{seed}"))
        policy = ppo.train(cfg)["agent"].lm
        results["ppo_per_seed"][seed] = {
            s: dialogue_metrics(evaluator(policy, sets[s], win_rate=False)["samples"], task)
            for s in splits}
        print(json.dumps({seed: results["ppo_per_seed"][seed]}), flush=True)
    for s in splits:
        per = [results["ppo_per_seed"][seed][s] for seed in args.seeds]
        results["ppo"][s] = {}
        for key in ("success_rate", "mean_turns", "gold_mean"):
            x = np.array([p[key] for p in per])
            se = float(x.std(ddof=1) / np.sqrt(len(x))) if len(x) > 1 else float("nan")
            results["ppo"][s][key] = {"mean": float(x.mean()), "se": se}
    write_json(args.out, results)
    print(json.dumps({"sft": results["sft"], "ppo": results["ppo"]}, indent=2))
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
