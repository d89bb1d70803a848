"""Train a reward model (or an ensemble) on a JSONL file of preferences.

    python scripts/train_reward_model.py --data runs/prefs/train.jsonl --out-dir runs/rm
    python scripts/train_reward_model.py --data prefs.jsonl --n-models 3 --train.epochs 5
    tensorboard --logdir runs/rm/logs

The same command as `textenv reward` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["reward", *sys.argv[1:]]))
