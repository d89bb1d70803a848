"""Train a reward model (or an ensemble) on a JSONL file of preferences.

    python scripts/train_reward_model.py --data runs/prefs/train.jsonl --out-dir runs/rm
    python scripts/train_reward_model.py --data prefs.jsonl --ensemble 3 --train.epochs 5

The file may hold pairwise records {"prompt", "chosen", "rejected"} and/or ranked records
{"prompt", "responses", "ranking"} (see reward_models/data.py); a malformed line stops with
file:line. The reward model starts from an LM (default: the shipped SFT policy), is
calibrated on fresh samples of `--calibration-policy` (mean 0, std 1) and is written to
out_dir/name.safetensors + name.json, with tokenizer.json beside it so `RewardModel.load`
finds it. Logs (TensorBoard + train_log.csv) go to run_dir (default out_dir/logs):

    tensorboard --logdir runs/rm/logs

Ctrl-C stops training and still saves the best state so far.
"""

from __future__ import annotations

import json
import sys
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import torch
import tyro

from reward_models.data import read_preferences
from reward_models.ensemble import train_ensemble
from reward_models.model import RewardModel
from reward_models.pipeline import calibration_set
from reward_models.train import RMTrainConfig, calibrate, train_reward_model
from textenv.assets import ASSETS_DIR, load_policy, load_tokenizer
from textenv.tasks import make_task


@dataclass
class Args:
    data: Path
    """JSONL preference file (pairwise and/or ranked records)."""
    val_data: Path | None = None
    """Optional held-out JSONL; otherwise --train.val-fraction of the prompts are held out."""
    init_dir: Path = ASSETS_DIR
    """Directory with the LM to start from and its tokenizer.json."""
    init_name: str = "sft"
    """LM to initialise the trunk from ("sft" or "base")."""
    out_dir: Path = Path("runs/reward_model")
    """Where the reward model is written."""
    name: str = "reward"
    """File stem: out_dir/name.safetensors + name.json (ensembles: name.json + name_i.*)."""
    run_dir: Path | None = None
    """TensorBoard + CSV logs (default: out_dir/logs)."""
    task: str = "reviews"
    """Task whose train prompts are used for calibration samples."""
    calibration_policy: str = "sft"
    """LM in init_dir whose samples define score mean 0, std 1."""
    calibration_samples: int = 1024
    """Number of calibration samples (0: leave gain=1, bias=0)."""
    ensemble: int = 1
    """Train this many models (seeds seed, seed+1, ...) and save them as an ensemble."""
    ensemble_mode: Literal["mean", "conservative"] = "mean"
    """How the ensemble combines its members."""
    ensemble_k: float = 1.0
    """Conservative mode: score = mean - k * std."""
    threads: int = 2
    """torch threads."""
    train: RMTrainConfig = field(default_factory=RMTrainConfig)


def main(args: Args) -> dict:
    torch.set_num_threads(args.threads)
    tokenizer = load_tokenizer(args.init_dir)
    lm = load_policy(args.init_name, args.init_dir, tokenizer)
    records = read_preferences(args.data)
    val = read_preferences(args.val_data) if args.val_data else None
    print(f"{len(records)} records from {args.data}" + (f", {len(val)} held out from "
                                                        f"{args.val_data}" if val else ""))
    run_dir = args.run_dir or args.out_dir / "logs"
    calibration = None
    if args.calibration_samples > 0:
        policy = (lm if args.calibration_policy == args.init_name
                  else load_policy(args.calibration_policy, args.init_dir, tokenizer))
        calibration = calibration_set(policy, tokenizer, make_task(args.task),
                                      args.calibration_samples, seed=args.train.seed + 12345)
    tokenizer.save(args.out_dir / "tokenizer.json")
    extra = {"trained_by": "scripts/train_reward_model.py", "data": str(args.data),
             "init": f"{args.init_dir}/{args.init_name}", "config": asdict(args.train)}

    if args.ensemble > 1:
        if val is not None:
            records = records + val  # train_ensemble makes one shared split by prompt
        ens, results = train_ensemble(lm, tokenizer, records, args.train, args.ensemble,
                                      calibration, args.ensemble_mode, args.ensemble_k, run_dir)
        ens.save(args.out_dir, args.name)
        summary = {"members": [{"best_step": r.best_step, **r.best_val} for r in results]}
    else:
        rm = RewardModel.from_lm(lm, tokenizer, head_init_std=args.train.head_init_std,
                                 seed=args.train.seed)
        try:
            result = train_reward_model(rm, records, args.train, val_records=val,
                                        run_dir=run_dir)
        except FloatingPointError as e:
            # The model was restored to its best state; keep it, under a name that says so.
            rm.save(args.out_dir, f"{args.name}_last_good", extra={**extra, "error": str(e)})
            print(f"error: {e}\nsaved the last good state to "
                  f"{args.out_dir / (args.name + '_last_good')}.safetensors", file=sys.stderr)
            sys.exit(1)
        if calibration is not None:
            calibrate(rm, *calibration)
        rm.save(args.out_dir, args.name, extra={**extra, "best_step": result.best_step,
                                                "interrupted": result.interrupted})
        summary = {"steps": result.steps, "best_step": result.best_step,
                   "stopped_early": result.stopped_early, "interrupted": result.interrupted,
                   "val": result.best_val, "seconds": result.seconds,
                   "gain": rm.gain, "bias": rm.bias}
    print(json.dumps(summary, indent=2))
    print(f"saved to {args.out_dir / args.name}.json; logs in {run_dir}")
    return summary


if __name__ == "__main__":
    main(tyro.cli(Args))
