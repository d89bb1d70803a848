"""stable-baselines3 on TextGen-v0: does SB3 raise the mean reward over its starting policy?

    python scripts/sb3_baseline.py                         # PPO, the stated setting
    python scripts/sb3_baseline.py --algos ppo a2c maskable_ppo

The same command as `textenv sb3-baseline` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["sb3-baseline", *sys.argv[1:]]))
