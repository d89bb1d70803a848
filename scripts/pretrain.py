"""Pretrain a base LM on the task's synthetic corpus (the first stage of build_assets)."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

import torch
import tyro

from textenv.pipeline import PretrainConfig, build_tokenizer, pretrain
from textenv.tasks import make_task


@dataclass
class Args:
    out_dir: Path = Path("runs/pretrain")
    """Where to write base.safetensors, base.json and tokenizer.json."""
    seed: int = 0
    """Random seed."""
    task: str = "reviews"
    """Task whose corpus to train on."""
    config: PretrainConfig = field(default_factory=PretrainConfig)


if __name__ == "__main__":
    args = tyro.cli(Args)
    torch.set_num_threads(2)
    task = make_task(args.task)
    tokenizer = build_tokenizer(task)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    tokenizer.save(args.out_dir / "tokenizer.json")
    model, stats = pretrain(task, tokenizer, args.config, seed=args.seed)
    model.save(args.out_dir, "base")
    print(json.dumps(stats, indent=2))
