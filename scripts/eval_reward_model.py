"""Evaluate a reward model (or ensemble) against the labels and against the gold score.

    python scripts/eval_reward_model.py                                  # the shipped RM
    python scripts/eval_reward_model.py --rm-dir runs/rm --heldout runs/prefs/test.jsonl
    python scripts/eval_reward_model.py --policies runs/ppo/ckpt:policy   # + an RL checkpoint

The same command as `textenv eval-reward` (agents/cli.py says where its code lives).
"""

import sys

from agents.cli import main

if __name__ == "__main__":
    raise SystemExit(main(["eval-reward", *sys.argv[1:]]))
