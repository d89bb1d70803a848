"""Evaluate a reward model (or ensemble) against the labels and against the gold score.

    python scripts/eval_reward_model.py                                  # the shipped RM
    python scripts/eval_reward_model.py --rm-dir runs/rm --heldout runs/prefs/test.jsonl
    python scripts/eval_reward_model.py --policies runs/ppo/ckpt:policy   # + an RL checkpoint

Reports (see reward_models/evaluate.py): held-out pairwise accuracy against the noisy labels
and against gold (pairs >= 0.1 apart in gold), and the Spearman correlation with gold on
samples of the SFT policy (T=1), of a drifted policy (SFT at T=1.5) and of any extra
policies. Without `--heldout`, fresh held-out rankings are made by the simulated labeler.
Writes JSON (`--out`) and prints a markdown table.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from reward_models.data import read_preferences
from reward_models.ensemble import RewardEnsemble
from reward_models.evaluate import RMEvalConfig, evaluate_reward_model
from reward_models.model import RewardModel
from reward_models.pipeline import make_rankings
from textenv.assets import ASSETS_DIR, load_policy, load_tokenizer
from textenv.model import GPT
from textenv.tasks import make_task
from textenv.tokenizer import atomic_write_text


@dataclass
class Args:
    rm_dir: Path = ASSETS_DIR
    """Directory of the reward model (with tokenizer.json)."""
    name: str = "reward"
    """File stem of the reward model (or of the ensemble's JSON with --ensemble)."""
    ensemble: bool = False
    """`name` is an ensemble written by RewardEnsemble.save."""
    ensemble_mode: str | None = None
    """Override the ensemble's mode ("mean" or "conservative")."""
    policy_dir: Path = ASSETS_DIR
    """Directory of the SFT policy whose samples are the reference distribution."""
    policy_name: str = "sft"
    """The SFT policy's file stem."""
    policies: list[str] = field(default_factory=list)
    """Extra policies to correlate on, as DIR:NAME or DIR:NAME@TEMPERATURE (e.g. RL
    checkpoints saved with GPT.save)."""
    heldout: Path | None = None
    """Held-out JSONL preferences; default: fresh simulated rankings of eval prompts."""
    heldout_groups: int = 256
    """Fresh held-out rankings to make when --heldout is not given."""
    k: int = 4
    """Responses per fresh held-out ranking."""
    labeler_temperature: float = 0.1
    """Noise of the simulated labeler for fresh held-out rankings."""
    task: str = "reviews"
    """Task (prompts and gold score)."""
    eval: RMEvalConfig = field(default_factory=RMEvalConfig)
    out: Path | None = None
    """Write the results as JSON here."""
    threads: int = 2
    """torch threads."""


def parse_policy(spec: str) -> tuple[str, Path, str, float]:
    """'dir:name@1.0' -> (label, dir, name, temperature)."""
    temperature = 1.0
    if "@" in spec:
        spec, t = spec.rsplit("@", 1)
        temperature = float(t)
    if ":" not in spec:
        raise ValueError(f"policy {spec!r}: expected DIR:NAME[@TEMPERATURE]")
    directory, name = spec.rsplit(":", 1)
    label = f"{Path(directory).name}_{name}".replace("-", "_").replace(".", "_")
    return label, Path(directory), name, temperature


def markdown_table(results: dict) -> str:
    rows = [("held-out pairwise accuracy vs gold (gap >= 0.1)", "rm_pairwise_accuracy_gold"),
            ("held-out pairwise accuracy vs noisy labels", "rm_pairwise_accuracy_noisy")]
    rows += [(f"Spearman with gold, {k.removeprefix('rm_spearman_gold_')} samples", k)
             for k in results if k.startswith("rm_spearman_gold_")]
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {label} | {results[key]:.3f} |" for label, key in rows if key in results]
    return "\n".join(lines)


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    task = make_task(args.task)
    tokenizer = load_tokenizer(args.policy_dir)
    sft = load_policy(args.policy_name, args.policy_dir, tokenizer)
    rm = (RewardEnsemble.load(args.rm_dir, args.name, mode=args.ensemble_mode) if args.ensemble
          else RewardModel.load(args.rm_dir, args.name))
    if args.heldout:
        heldout = read_preferences(args.heldout)
    else:
        heldout = make_rankings(sft, tokenizer, task, args.heldout_groups, args.k, split="eval",
                                labeler_temperature=args.labeler_temperature,
                                seed=args.eval.seed + 7)
    policies = {}
    for spec in args.policies:
        label, directory, name, temperature = parse_policy(spec)
        policies[label] = (GPT.load(directory, name), temperature)
    results = evaluate_reward_model(rm, task, sft, tokenizer, args.eval, heldout, policies)
    if args.out:
        atomic_write_text(args.out, json.dumps(results, indent=2, sort_keys=True))
    print(json.dumps(results, indent=2, sort_keys=True))
    print()
    print(markdown_table(results))
    return results


if __name__ == "__main__":
    main(tyro.cli(Args))
