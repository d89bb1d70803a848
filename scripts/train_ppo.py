"""Train LM-PPO on TextGen-v0.  `python scripts/train_ppo.py --help` lists every option.

Examples:
    python scripts/train_ppo.py                                # the default run
    python scripts/train_ppo.py --init-kl-coef 0 --no-adaptive-kl --run-dir runs/no_kl
    python scripts/train_ppo.py --run-dir runs/ppo --resume    # continue a stopped run
"""

from __future__ import annotations

import json

import tyro

from agents.ppo import PPOConfig, train

if __name__ == "__main__":
    result = train(tyro.cli(PPOConfig))
    print(json.dumps(result["final"], indent=2))
    print(f"metrics: {result['run_dir']}/metrics.csv  (tensorboard --logdir {result['run_dir']})")
