"""Train any agent on TextGen-v0: `python scripts/train.py ALGO --help`, ALGO in
{ppo, reinforce, rloo, grpo, best-of-n, sb3-ppo}.

    python scripts/train.py ppo --total-env-steps 100000
    python scripts/train.py rloo --rloo-k 4 --seed 2
    python scripts/train.py grpo --run-dir runs/grpo --resume

The same command as `textenv train` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["train", *sys.argv[1:]]))
