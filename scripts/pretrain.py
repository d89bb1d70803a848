"""Pretrain a base LM on the task's synthetic corpus (the first stage of build_assets).

    python scripts/pretrain.py --out-dir runs/pretrain
    python scripts/pretrain.py --config.steps 200 --seed 3

The same command as `textenv pretrain` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["pretrain", *sys.argv[1:]]))
