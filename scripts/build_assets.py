"""Build the default assets from nothing, deterministically, into textenv/assets/.

    corpus -> base LM -> SFT policy -> simulated rankings -> reward model -> quality.json

    python scripts/build_assets.py                 # the shipped build
    python scripts/build_assets.py --out-dir /tmp/a --pretrain.steps 100 ...   # a quick one

Every number in quality.json is measured here, on this build.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
import tyro

from reward_models.pipeline import RewardPipelineConfig
from reward_models.train import RMTrainConfig
from textenv.assets import ASSETS_DIR, load_policy, read_quality
from textenv.pipeline import (
    PolicyEvalConfig,
    PretrainConfig,
    SFTConfig,
    build_tokenizer,
    evaluate_policy,
    pretrain,
    supervised_finetune,
)
from textenv.tasks import make_task
from textenv.tokenizer import atomic_write_text


def default_rm_config() -> RewardPipelineConfig:
    """The shipped reward model's settings: 4000 ranked groups of K=4 SFT samples, 12 epochs
    at lr 1e-3 (10x on the scalar head), mean-centring penalty 0.1."""
    return RewardPipelineConfig(train_prompts=4000, train=RMTrainConfig(
        epochs=12, lr=1e-3, batch_size=32, center_coef=0.1, head_lr_mult=10.0, patience=0))


@dataclass
class BuildConfig:
    out_dir: Path = ASSETS_DIR
    """Where to write the assets."""
    seed: int = 0
    """One seed for the whole build: same seed, same assets."""
    task: str = "reviews"
    """Task to build for."""
    threads: int = 1
    """torch threads. Float sums depend on the thread count, so the shipped build uses 1:
    the same command gives the same assets on any machine with the same torch."""
    pretrain: PretrainConfig = field(default_factory=PretrainConfig)
    sft: SFTConfig = field(default_factory=SFTConfig)
    eval: PolicyEvalConfig = field(default_factory=PolicyEvalConfig)
    rm: RewardPipelineConfig = field(default_factory=default_rm_config)
    reward: bool = True
    """Also train the default reward model (reward_models.pipeline)."""
    reuse_lm: bool = False
    """Reuse base/SFT models already in out_dir instead of training them (to iterate on
    the reward-model stage; the shipped build runs every stage, and gives the same base/SFT
    bits with the same seed and threads)."""


def main(cfg: BuildConfig) -> dict:
    torch.set_num_threads(cfg.threads)
    t0 = time.perf_counter()
    out = Path(cfg.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    task = make_task(cfg.task)
    tokenizer = build_tokenizer(task)
    tokenizer.save(out / "tokenizer.json")

    if cfg.reuse_lm:  # keep base/SFT (and their measured numbers) from an earlier build
        quality = {k: v for k, v in read_quality(out).items()
                   if k.startswith(("base_", "pretrain_", "sft_"))}
        sft = load_policy("sft", out, tokenizer)
    else:
        base, quality = pretrain(task, tokenizer, cfg.pretrain, seed=cfg.seed)
        base.save(out, "base")
        sft, stats = supervised_finetune(base, task, tokenizer, cfg.sft, seed=cfg.seed + 1)
        sft.save(out, "sft")
        quality.update(stats)
    sft_eval = evaluate_policy(sft, task, tokenizer, cfg.eval)
    quality.update(sft_gold_mean=sft_eval["gold_mean"], sft_eos_rate=sft_eval["eos_rate"],
                   sft_mean_length=sft_eval["mean_length"])
    best_rng = np.random.default_rng(cfg.seed)
    best = [task.gold_score(p, task.best_response(p, best_rng))
            for p in sft_eval["prompts"]]
    quality["best_response_gold_mean"] = sum(best) / len(best)

    if cfg.reward:
        from reward_models.pipeline import build_default_reward_model

        quality.update(build_default_reward_model(sft, task, tokenizer, out, seed=cfg.seed + 2,
                                                  cfg=cfg.rm))

    quality["build_seconds"] = time.perf_counter() - t0
    quality["torch_version"] = torch.__version__
    atomic_write_text(out / "quality.json", json.dumps(quality, indent=2, sort_keys=True))
    atomic_write_text(out / "build_config.json",
                      json.dumps(asdict(cfg), indent=2, default=str, sort_keys=True))
    print(json.dumps({k: v for k, v in quality.items()}, indent=2, sort_keys=True))
    print("\nSamples of the SFT policy on held-out prompts:")
    for p, r, g in list(zip(sft_eval["prompts"], sft_eval["responses"], sft_eval["gold"]))[:5]:
        print(f"  [{g:.2f}] {p}  ->  {r}")
    return quality


if __name__ == "__main__":
    main(tyro.cli(BuildConfig))
