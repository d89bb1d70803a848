"""Train LM-PPO on TextGen-v0.  `python scripts/train_ppo.py --help` lists every option.

    python scripts/train_ppo.py                                # the default run
    python scripts/train_ppo.py --init-kl-coef 0 --no-adaptive-kl --run-dir runs/no_kl
    python scripts/train_ppo.py --run-dir runs/ppo --resume    # continue a stopped run

The same command as `textenv ppo` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["ppo", *sys.argv[1:]]))
