"""Reward-model ensembles: a defence against reward over-optimisation.

Several reward models trained on the same preferences but from different seeds (head
initialisation and data order) agree where the data is dense and disagree where a policy
has drifted away from it. Scoring with

    mode="mean"           mean_m score_m                 (less noisy than one model)
    mode="conservative"   mean_m score_m - k * std_m     (penalises disagreement)

makes exploiting one model's quirks unprofitable (Coste et al. 2023, "Reward model
ensembles help mitigate overoptimization"). Each member is calibrated on its own, so the
members' scores share one scale before they are combined.

On disk: `directory/name.json` lists the members and the mode; member i is a normal reward
model saved as `directory/name_i.safetensors` + `name_i.json`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path
from typing import Literal

import torch
from torch import nn

from reward_models.data import PreferenceRecord
from reward_models.model import RewardModel
from reward_models.train import (
    RMTrainConfig,
    TrainResult,
    calibrate,
    split_records,
    train_reward_model,
)
from textenv.model import GPT, _atomic_write
from textenv.tokenizer import Tokenizer, WordTokenizer

ENSEMBLE_FORMAT = "textenv-reward-ensemble"
MODES = ("mean", "conservative")


class RewardEnsemble(nn.Module):
    """Combine reward models: `score()` is their mean, or mean - k * std (conservative)."""

    def __init__(self, models: Sequence[RewardModel],
                 mode: Literal["mean", "conservative"] = "mean", k: float = 1.0):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one reward model")
        if mode not in MODES:
            raise ValueError(f"unknown ensemble mode {mode!r}; valid: {', '.join(MODES)}")
        vocab = {m.config.vocab_size for m in models}
        if len(vocab) > 1:
            raise ValueError(f"ensemble members disagree on vocab_size: {sorted(vocab)}")
        self.models = nn.ModuleList(models)
        self.mode, self.k = mode, float(k)
        self.tokenizer = models[0].tokenizer

    def __len__(self) -> int:
        return len(self.models)

    @torch.no_grad()
    def member_scores(self, prompts: Sequence[str], responses: Sequence[str],
                      batch_size: int | None = None) -> torch.Tensor:
        """(M, B): each member's normalised score."""
        return torch.stack([m.score(prompts, responses, batch_size) for m in self.models])

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str],
              batch_size: int | None = None) -> torch.Tensor:
        """(B,): mean over members, minus k * their std in "conservative" mode."""
        s = self.member_scores(prompts, responses, batch_size)  # (M, B)
        mean = s.mean(0)  # (B,)
        if self.mode == "mean":
            return mean
        # Population std (correction=0): defined for one member too (it is then 0).
        return mean - self.k * s.std(0, correction=0)  # (B,)

    def save(self, directory: str | Path, name: str = "reward_ensemble") -> None:
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        members = [f"{name}_{i}" for i in range(len(self.models))]
        for member, model in zip(members, self.models):
            model.save(directory, member)
        meta = {"format": ENSEMBLE_FORMAT, "version": 1, "mode": self.mode, "k": self.k,
                "members": members}
        text = json.dumps(meta, indent=2)
        _atomic_write(directory / f"{name}.json", lambda p: Path(p).write_text(text))

    @classmethod
    def load(cls, directory: str | Path, name: str = "reward_ensemble",
             tokenizer: Tokenizer | None = None, mode: str | None = None,
             k: float | None = None) -> RewardEnsemble:
        """Load an ensemble written by save(); `mode` / `k` override the stored ones."""
        directory = Path(directory)
        path = directory / f"{name}.json"
        if not path.is_file():
            raise FileNotFoundError(f"reward ensemble file not found: {path}")
        try:
            meta = json.loads(path.read_text())
            if not isinstance(meta, dict) or meta.get("format") != ENSEMBLE_FORMAT:
                raise ValueError(f"not a reward-ensemble file (expected \"format\": "
                                 f"\"{ENSEMBLE_FORMAT}\")")
            members = [str(m) for m in meta["members"]]
            stored_mode, stored_k = str(meta["mode"]), float(meta["k"])
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"could not parse reward ensemble file {path}: {e!r}") from e
        if tokenizer is None:
            tok_path = directory / "tokenizer.json"
            if not tok_path.is_file():
                raise FileNotFoundError(f"tokenizer file not found: {tok_path}")
            tokenizer = WordTokenizer.load(tok_path)
        models = [RewardModel.load(directory, m, tokenizer=tokenizer) for m in members]
        return cls(models, mode=mode or stored_mode, k=stored_k if k is None else k)


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
