"""K-wise vs pairwise reward-model training at the SAME number of labelled responses.

    textenv compare-rm-losses                                 # default assets, 1 seed
    textenv compare-rm-losses --seeds 0 1 2 --out-dir runs/compare_rm

Variants (each trained with the same RMTrainConfig, from the same SFT trunk):

* `kwise`       N prompts x K responses, ranked; K-wise loss, every response forwarded once
                per epoch (InstructGPT). N*K labelled responses, N*C(K,2) comparisons.
* `pairwise`    N*K/2 independent pairs (a fresh prompt and two fresh responses each),
                Bradley-Terry loss. Same N*K labelled responses, only N*K/2 comparisons.
* `kwise_pairs` the K-wise data with each ranking split into its C(K,2) pairs, shuffled as
                independent batch elements (each response forwarded K-1 times per epoch).

Batches hold the same number of responses for `kwise` and `pairwise` (batch_size prompts
x K = batch_size*K/2 pairs x 2) and the same number of comparisons for `kwise_pairs`, so
all variants take the same number of optimizer steps per epoch.

All are scored on the same held-out rankings (eval-split prompts) and on the same SFT and
drifted samples. Writes results.json + results.md to out_dir and prints the table.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass, field, replace
from math import comb
from pathlib import Path

import numpy as np
import torch

from reward_models.evaluate import RMEvalConfig, evaluate_reward_model
from reward_models.pipeline import RewardPipelineConfig, calibration_set, make_rankings
from reward_models.train import RMTrainConfig, calibrate, train_reward_model
from textenv.assets import load_policy, load_tokenizer, resolve_assets_dir
from textenv.rewards import RewardModel
from textenv.storage import atomic_write, write_json
from textenv.tasks import make_task

VARIANTS = ("kwise", "pairwise", "kwise_pairs")


@dataclass
class CompareLossesConfig:
    """K-wise vs pairwise reward-model training at the same number of labelled responses:
    trains each variant, scores all on the same held-out rankings, writes results.json and
    results.md to out_dir and prints the table."""

    assets: Path | None = None
    """Directory with tokenizer.json and the SFT policy (sft.*; default: the task's shipped
    assets)."""
    out_dir: Path = Path("runs/compare_rm_losses")
    """Where results.json, results.md and the training logs go."""
    variants: list[str] = field(default_factory=lambda: list(VARIANTS))
    """Which variants to train (kwise, pairwise, kwise_pairs)."""
    k: int = 4
    """Responses per ranking in the K-wise data."""
    groups: int = 2000
    """N: rankings in the K-wise data (pairwise gets N*K/2 pairs). The default build uses
    RewardPipelineConfig.train_prompts; 2000 keeps this comparison to ~20 minutes."""
    test_groups: int = 256
    """Held-out rankings (eval-split prompts) shared by all variants."""
    labeler_temperature: float = RewardPipelineConfig.labeler_temperature
    """Bradley-Terry noise of the simulated labeler."""
    seeds: list[int] = field(default_factory=lambda: [0])
    """One data set + one training run per variant per seed; the table shows mean (+- std)."""
    calibration_samples: int = 1024
    """Fresh SFT samples for each model's calibration."""
    train: RMTrainConfig = field(default_factory=RMTrainConfig)
    eval: RMEvalConfig = field(default_factory=RMEvalConfig)
    task: str = "reviews"
    """Task (prompts, gold score and simulated labeler)."""
    threads: int = 1
    """torch threads (1, like the shipped build: bit-reproducible results)."""


def run_variant(variant: str, sft, tokenizer, task, args: CompareLossesConfig, seed: int,
                kwise_data, test_data, calibration) -> dict:
    """Train one variant on its data, calibrate it, and score it on the shared test data."""
    k = args.k
    cfg = replace(args.train, seed=seed)
    if variant == "kwise":
        records = kwise_data
    elif variant == "pairwise":
        n_pairs = args.groups * k // 2
        ranked = make_rankings(sft, tokenizer, task, n_pairs, 2, split="train",
                               labeler_temperature=args.labeler_temperature, seed=seed * 100 + 3)
        records = [r.to_pairs()[0] for r in ranked]  # (better, worse) as PairwiseRecord
        cfg = replace(cfg, batch_size=max(1, cfg.batch_size * k // 2))  # same responses/step
    elif variant == "kwise_pairs":
        records = kwise_data
        cfg = replace(cfg, expand_to_pairs=True, batch_size=cfg.batch_size * comb(k, 2))
    else:
        raise ValueError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}")
    responses = sum(len(getattr(r, "responses", (0, 0))) for r in records)
    comparisons = sum(comb(len(r.responses), 2) if hasattr(r, "responses") else 1
                      for r in records)
    rm = RewardModel.from_lm(sft, tokenizer, head_init_std=cfg.head_init_std, seed=seed)
    result = train_reward_model(rm, records, cfg, run_dir=args.out_dir / f"{variant}_seed{seed}")
    calibrate(rm, *calibration)
    quality = evaluate_reward_model(rm, task, sft, tokenizer, args.eval, heldout=test_data)
    return {"variant": variant, "seed": seed, "labelled_responses": responses,
            "comparisons": comparisons, "responses_forwarded": result.responses_forwarded,
            "steps": result.steps, "best_step": result.best_step,
            "train_seconds": result.seconds, **quality}


METRICS = [("gold acc", "rm_pairwise_accuracy_gold"), ("noisy acc", "rm_pairwise_accuracy_noisy"),
           ("Spearman SFT", "rm_spearman_gold_sft"), ("Spearman T=1.5", "rm_spearman_gold_drift")]


def markdown(rows: list[dict], variants: list[str]) -> str:
    head = ["loss", "labelled responses", "comparisons", "responses forwarded", "train s"]
    lines = ["| " + " | ".join(head + [m for m, _ in METRICS]) + " |",
             "|" + "---|" * (len(head) + len(METRICS))]
    for v in variants:
        rs = [r for r in rows if r["variant"] == v]
        if not rs:
            continue

        def fmt(key: str, digits: int = 3, rs: list[dict] = rs) -> str:
            x = np.array([r[key] for r in rs], dtype=float)
            s = f"{x.mean():.{digits}f}"
            return s + (f" ± {x.std():.{digits}f}" if len(x) > 1 else "")

        cells = [v, f"{rs[0]['labelled_responses']}", f"{rs[0]['comparisons']}",
                 f"{rs[0]['responses_forwarded']}", fmt("train_seconds", 0)]
        lines.append("| " + " | ".join(cells + [fmt(key) for _, key in METRICS]) + " |")
    return "\n".join(lines)


def main(args: CompareLossesConfig) -> list[dict]:
    """`textenv compare-rm-losses`: every variant x seed; returns one row per run."""
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    task = make_task(args.task)
    args.assets = resolve_assets_dir(args.assets, args.task)
    tokenizer = load_tokenizer(args.assets)
    sft = load_policy("sft", args.assets, tokenizer)
    args.out_dir.mkdir(parents=True, exist_ok=True)
    # Shared by every variant and seed: the held-out rankings and the calibration samples.
    test_data = make_rankings(sft, tokenizer, task, args.test_groups, args.k, split="eval",
                              labeler_temperature=args.labeler_temperature, seed=999)
    calibration = calibration_set(sft, tokenizer, task, args.calibration_samples, seed=998)
    rows = []
    for seed in args.seeds:
        kwise_data = make_rankings(sft, tokenizer, task, args.groups, args.k, split="train",
                                   labeler_temperature=args.labeler_temperature,
                                   seed=seed * 100 + 1)
        for variant in args.variants:
            print(f"== {variant}, seed {seed}")
            rows.append(run_variant(variant, sft, tokenizer, task, args, seed, kwise_data,
                                    test_data, calibration))
            print(json.dumps(rows[-1], indent=1))
    table = markdown(rows, args.variants)
    write_json(args.out_dir / "results.json",
               {"config": asdict(args), "rows": rows, "seconds": time.perf_counter() - t0})
    atomic_write(args.out_dir / "results.md", table + "\n")
    print()
    print(table)
    return rows
