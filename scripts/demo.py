"""`make demo`: LM-PPO on TextGen-v0 for a few minutes, before/after samples, a plot.

    python scripts/demo.py
    python scripts/demo.py --ppo.total-env-steps 20000 --show 3

The same command as `textenv demo` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["demo", *sys.argv[1:]]))
