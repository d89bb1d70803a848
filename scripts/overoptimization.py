"""Reward-model over-optimisation, measured: LM-PPO with and without the KL penalty.

    python scripts/overoptimization.py --total-env-steps 150000

The same command as `textenv overoptimization` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["overoptimization", *sys.argv[1:]]))
