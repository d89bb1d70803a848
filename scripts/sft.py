"""Supervised fine-tuning of a base LM on imperfect demonstrations (loss on responses only).

    python scripts/sft.py --base-dir runs/pretrain --out-dir runs/sft

The same command as `textenv sft` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["sft", *sys.argv[1:]]))
