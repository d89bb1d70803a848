"""Compare algorithms x seeds on TextGen-v0 under one equal budget of env steps.

    python scripts/compare.py                                    # everything, 3 seeds
    python scripts/compare.py --algos ppo rloo --seeds 1 --total-env-steps 20000

The same command as `textenv compare` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["compare", *sys.argv[1:]]))
