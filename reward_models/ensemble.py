"""Training reward-model ensembles: a defence against reward over-optimisation.

Several reward models trained on the same preferences but from different seeds (head
initialisation and data order) agree where the data is dense and disagree where a policy
has drifted away from it. Scoring with

    mode="mean"           mean_m score_m                 (less noisy than one model)
    mode="conservative"   mean_m score_m - k * std_m     (penalises disagreement)

makes exploiting one model's quirks unprofitable (Coste et al. 2023, "Reward model
ensembles help mitigate overoptimization"). Each member is calibrated on its own, so the
members' scores share one scale before they are combined.

`textenv.rewards.RewardEnsemble` scores with one (it is what `reward="ensemble"` loads);
this module trains one.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

from reward_models.data import PreferenceRecord
from reward_models.train import (
    RMTrainConfig,
    TrainResult,
    calibrate,
    split_records,
    train_reward_model,
)
from textenv.model import GPT
from textenv.rewards import RewardEnsemble, RewardModel
from textenv.tokenizer import Tokenizer


def train_ensemble(lm: GPT, tokenizer: Tokenizer, records: Sequence[PreferenceRecord],
                   cfg: RMTrainConfig, n_models: int = 3,
                   calibration: tuple[Sequence[str], Sequence[str]] | None = None,
                   mode: Literal["mean", "conservative"] = "mean", k: float = 1.0,
                   run_dir: str | Path | None = None
                   ) -> tuple[RewardEnsemble, list[TrainResult]]:
    """Train `n_models` reward models from `lm`, member i with seed cfg.seed + i.

    The seed changes the head initialisation and the data order; the held-out split stays
    the same (split with cfg.seed) so the members' validation numbers are comparable.
    Each member is calibrated on `calibration` = (prompts, SFT responses) if given.
    """
    train, val = split_records(records, cfg.val_fraction, cfg.seed)
    models, results = [], []
    for i in range(n_models):
        member_cfg = replace(cfg, seed=cfg.seed + i)
        rm = RewardModel.from_lm(lm, tokenizer, head_init_std=cfg.head_init_std,
                                 seed=member_cfg.seed)
        member_run = Path(run_dir) / f"member_{i}" if run_dir else None
        results.append(train_reward_model(rm, train, member_cfg, val_records=val or None,
                                          run_dir=member_run))
        if calibration is not None:
            calibrate(rm, *calibration)
        models.append(rm)
        if results[-1].interrupted:  # Ctrl-C: keep the members trained so far, stop
            break
    return RewardEnsemble(models, mode=mode, k=k), results
