"""One command line for the whole pipeline: `textenv <command> [--help]`.

Each command runs the matching script in `scripts/` (a source checkout, as `make` sets up),
so the script stays the one place that defines it.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
COMMANDS = {
    "demo": ("demo.py", "train LM-PPO for a few minutes; before/after samples and a plot"),
    "build-assets": ("build_assets.py", "corpus -> base LM -> SFT -> reward model, from nothing"),
    "pretrain": ("pretrain.py", "pretrain a base LM on the synthetic corpus"),
    "sft": ("sft.py", "supervised fine-tuning on imperfect demonstrations"),
    "reward": ("train_reward_model.py", "train a reward model on preference JSONL"),
    "eval-reward": ("eval_reward_model.py", "evaluate a reward model against gold"),
    "ppo": ("train_ppo.py", "train LM-PPO"),
    "train": ("train.py", "train any agent: ppo, reinforce, rloo, grpo, best-of-n"),
    "compare": ("compare.py", "algorithms x seeds at an equal budget: table and plots"),
    "bench": ("bench.py", "speed benchmark (JSON + table)"),
}


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print("usage: textenv <command> [options]   (textenv <command> --help)\n\ncommands:")
        for name, (_, what) in COMMANDS.items():
            print(f"  {name:13s} {what}")
        return 0
    name = argv[0]
    if name not in COMMANDS:
        print(f"textenv: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    script = SCRIPTS / COMMANDS[name][0]
    if not script.exists():
        print(f"textenv: {script} not found; the commands need a source checkout "
              f"(pip install -e .)", file=sys.stderr)
        return 2
    sys.argv = [f"textenv {name}", *argv[1:]]
    runpy.run_path(str(script), run_name="__main__")
    return 0


if __name__ == "__main__":
    sys.exit(main())
