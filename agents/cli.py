"""The `textenv` command: one entry point for the whole pipeline.

    textenv --help                        the commands, one line each
    textenv ppo --help                    the options of one command
    textenv ppo --total-env-steps 20000 --run-dir runs/ppo
    textenv train rloo --rloo-k 4         any algorithm of agents.ALGORITHMS

A command is a config dataclass (its field docstrings are the `--help`) and a function
`main(config)` that lives in one of the three packages; `COMMANDS` says where. tyro turns
the command line into the dataclass. Only the chosen command's module is imported. The
files in scripts/ are the same commands: `python scripts/train_ppo.py ...` is `textenv ppo ...`.

This file is in `agents`, the top layer, because it may import all three packages
(agents -> reward_models -> textenv).
"""

from __future__ import annotations

import importlib
import json
import os
import sys
from typing import Annotated, Union

import tyro

# name: (what it does, "module:ConfigClass", "module:main function")
COMMANDS = {
    "demo": ("train LM-PPO for a few minutes; before/after samples and a plot",
             "agents.demo:DemoConfig", "agents.demo:main"),
    "build-assets": ("corpus -> base LM -> SFT -> reward model, from nothing",
                     "reward_models.pipeline:BuildConfig",
                     "reward_models.pipeline:build_assets_main"),
    "build-jsonl": ("assets from your own JSONL files (= build-assets --task jsonl)",
                    "reward_models.user_data:UserDataConfig",
                    "reward_models.user_data:build_user_assets"),
    "pretrain": ("pretrain a base LM on the synthetic corpus",
                 "textenv.pipeline:PretrainArgs", "textenv.pipeline:pretrain_main"),
    "sft": ("supervised fine-tuning on imperfect demonstrations",
            "textenv.pipeline:SFTArgs", "textenv.pipeline:sft_main"),
    "reward": ("train a reward model (or an ensemble) on preference JSONL",
               "reward_models.train:TrainRewardModelArgs", "reward_models.train:main"),
    "eval-reward": ("evaluate a reward model against the labels and the gold score",
                    "reward_models.evaluate:EvalRewardModelArgs", "reward_models.evaluate:main"),
    "compare-rm-losses": ("K-wise vs pairwise reward-model loss at equal labelling effort",
                          "reward_models.compare_losses:CompareLossesConfig",
                          "reward_models.compare_losses:main"),
    "ppo": ("train LM-PPO", "agents.ppo:PPOConfig", "agents.cli:train_main"),
    # A dict of {name: (ConfigClass, train)} becomes one subcommand per entry.
    "train": ("train any agent: ppo, reinforce, rloo, grpo, dr-grpo, reinforce++, best-of-n, "
              "sb3-ppo",
              "agents:ALGORITHMS", "agents.cli:train_main"),
    "compare": ("algorithms x seeds at an equal budget: table and plots",
                "agents.compare:CompareConfig", "agents.compare:main"),
    "overoptimization": ("LM-PPO with and without the KL penalty: gold vs learned reward",
                         "agents.overoptimization:OveroptimizationConfig",
                         "agents.overoptimization:main"),
    "iterated-rlhf": ("RL rounds alternating with retraining the reward model on the policy",
                      "agents.iterated_rlhf:IteratedRLHFConfig", "agents.iterated_rlhf:main"),
    "sb3-baseline": ("stable-baselines3 from the SFT policy: before/after table",
                     "agents.sb3:SB3BaselineConfig", "agents.sb3:baseline_main"),
    "bench": ("speed benchmark (JSON + table)", "agents.bench:BenchConfig", "agents.bench:main"),
}


def usage() -> str:
    lines = ["usage: textenv COMMAND [options]      (textenv COMMAND --help: its options)",
             "", "commands:"]
    lines += [f"  {name:18s} {what}" for name, (what, _, _) in COMMANDS.items()]
    return "\n".join(lines)


def load_command(name: str):
    """Import the module of command `name` (only that one); returns (config type, main)."""

    def attribute(path: str):
        module, attr = path.split(":")
        return getattr(importlib.import_module(module), attr)

    _, config_path, main_path = COMMANDS[name]
    config = attribute(config_path)
    if isinstance(config, dict):  # `textenv train ALGO`: one subcommand per algorithm
        config = Union[tuple(Annotated[cls, tyro.conf.subcommand(algo)]  # noqa: UP007
                             for algo, (cls, _) in config.items())]
    return config, attribute(main_path)


def train_main(cfg) -> dict:
    """`textenv ppo` and `textenv train ALGO`: train the algorithm whose config `cfg` is,
    then print its final evaluation and where its metrics are."""
    from agents import ALGORITHMS

    name, train = next((name, fn) for name, (cls, fn) in ALGORITHMS.items() if type(cfg) is cls)
    if name in ("best-of-n", "sb3-ppo") and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        raise SystemExit(f"textenv: {name} runs as one process; start it without torchrun "
                         f"(data-parallel training: ppo, reinforce, rloo, grpo, dr-grpo, "
                         f"reinforce++)")
    result = train(cfg)
    if result["final"] is None:  # a torchrun process other than rank 0: rank 0 reports
        return result
    print(json.dumps(result["final"], indent=2))
    print(f"metrics: {result['run_dir']}/metrics.csv  (tensorboard --logdir {result['run_dir']})")
    return result


def _task_option(args: list[str]) -> str | None:
    """The value of --task in `args` (`--task X` or `--task=X`), or None."""
    for i, arg in enumerate(args):
        if arg == "--task" and i + 1 < len(args):
            return args[i + 1]
        if arg.startswith("--task="):
            return arg.split("=", 1)[1]
    return None


def main(argv: list[str] | None = None) -> int:
    """Run `textenv COMMAND [options]`; returns the exit status (`--help` inside a command
    exits through tyro with status 0)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0
    name = argv[0]
    if name == "build-assets" and _task_option(argv[1:]) == "jsonl":
        name = "build-jsonl"  # the user's own files: a command with options of its own
    if name not in COMMANDS:
        print(f"textenv: unknown command {name!r}; valid commands: {', '.join(COMMANDS)}",
              file=sys.stderr)
        return 2
    config_type, run = load_command(name)
    # A config with per-task defaults (build-assets: BuildConfig.for_task) starts from those
    # of the --task given, so `--help` shows them and any flag overrides them.
    for_task = getattr(config_type, "for_task", None)
    defaults = {"default": for_task(_task_option(argv[1:]))} if for_task else {}
    run(tyro.cli(config_type, args=argv[1:], prog=f"textenv {name}", **defaults))
    return 0


if __name__ == "__main__":
    sys.exit(main())
