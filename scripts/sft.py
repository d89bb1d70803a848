"""Supervised fine-tuning of a base LM on imperfect demonstrations (loss on responses only)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from textenv.assets import load_policy, load_tokenizer
from textenv.pipeline import PolicyEvalConfig, SFTConfig, evaluate_policy, supervised_finetune
from textenv.tasks import make_task


@dataclass
class Args:
    base_dir: Path = Path("runs/pretrain")
    """Directory holding base.safetensors/base.json and tokenizer.json."""
    out_dir: Path = Path("runs/sft")
    """Where to write sft.safetensors and sft.json."""
    seed: int = 1
    """Random seed."""
    task: str = "reviews"
    """Task whose demonstrations to train on."""
    config: SFTConfig = field(default_factory=SFTConfig)
    eval: PolicyEvalConfig = field(default_factory=PolicyEvalConfig)


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.set_num_threads(2)
    task = make_task(args.task)
    tokenizer = load_tokenizer(args.base_dir)
    base = load_policy("base", args.base_dir, tokenizer)
    model, stats = supervised_finetune(base, task, tokenizer, args.config, seed=args.seed)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    model.save(args.out_dir, "sft")
    tokenizer.save(args.out_dir / "tokenizer.json")
    result = evaluate_policy(model, task, tokenizer, args.eval)
    stats.update(sft_gold_mean=result["gold_mean"], sft_eos_rate=result["eos_rate"])
    print(json.dumps(stats, indent=2))
