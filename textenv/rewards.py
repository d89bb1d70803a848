"""Rewards: the reward presets of the envs and the inference side of learned reward models.

    reward="learned"    the reward model shipped in assets_dir (`RewardModel`), normalised so
                        that SFT samples score mean 0, std 1
    reward="gold"       the task's ground-truth scorer, in [0, 1]
    reward="ensemble"   the reward ensemble in assets_dir (`RewardEnsemble`: mean, or the
                        conservative mean - k * std)
    reward=callable     f(prompts, responses) -> array-like (B,)

`make_reward_fn` turns any of these into one batched scoring function. The `reward_models`
package trains and evaluates reward models; everything needed to *use* one lives here.

The reward model is a GPT trunk plus a scalar head, read at the last real token:

    input    [bos] + prompt tokens + response tokens            RIGHT-padded, (B, T)
    trunk    GPT blocks + final LayerNorm (no LM head)           (B, T, C)
    pick     hidden state at the last non-pad token              (B, C)
    head     Linear(C, 1)                                        (B,)   the *raw* score
    score    gain * raw + bias                                   (B,)   the *normalised* score

Why the last token: the trunk is causal, so the last real token is the only position that
has seen the whole (prompt, response). Why right padding: pads come *after* the last real
token, so they cannot change its hidden state, and a score is the same alone or inside a
padded batch (the tests check this to 1e-5).

Only score differences are learned from comparisons (the Bradley-Terry loss is blind to a
shift or a scale), so after training `reward_models.train.calibrate` picks `gain` and
`bias` so that samples of the SFT policy score mean 0 and standard deviation 1. The RL code
can then use one set of hyper-parameters (KL coefficient, clipping) whatever reward model
it is given.

Responses are encoded exactly as given: a terminated response ends with the word `<eos>`,
which the tokenizer maps to the EOS id, so the model sees whether the policy stopped.

On disk: `name.safetensors` (weights) + `name.json` (GPT config, gain, bias, ...),
each written atomically. Loading never executes code.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import contextmanager
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from textenv.lm import encode_prompt, pad_right
from textenv.model import GPT, GPTConfig
from textenv.storage import (
    check_name,
    check_tensors,
    load_tensors,
    read_json,
    save_tensors,
    write_json,
)
from textenv.tokenizer import Tokenizer, load_tokenizer_file

FORMAT = "textenv-reward-model"
FORMAT_VERSION = 1


class RewardModel(nn.Module):
    """Scalar reward r(prompt, response) from a transformer trunk.

    Build one from a trained LM with `RewardModel.from_lm(sft, tokenizer)`, or load one with
    `RewardModel.load(directory)`. Use `score(prompts, responses)` for normalised rewards
    and `raw_scores_from_ids(ids, mask)` inside training loops (it keeps the graph).
    """

    def __init__(self, config: GPTConfig, tokenizer: Tokenizer, gain: float = 1.0,
                 bias: float = 0.0, batch_size: int = 256):
        super().__init__()
        if config.vocab_size != tokenizer.vocab_size:
            raise ValueError(f"tokenizer/model vocab mismatch: the model config has vocab_size "
                             f"{config.vocab_size}, the tokenizer has {tokenizer.vocab_size}")
        self.config = config
        self.tokenizer = tokenizer
        self.transformer = GPT(config)
        # A reward model never predicts tokens: drop the LM head (with tied embeddings it is
        # the embedding matrix, so nothing is lost; untied, it would be dead weight on disk).
        self.transformer.lm_head = None
        self.head = nn.Linear(config.n_embd, 1)  # hidden state (C,) -> raw score
        nn.init.normal_(self.head.weight, std=0.02)
        nn.init.zeros_(self.head.bias)
        self.gain = float(gain)  # normalisation, set by calibrate(); plain floats, kept in JSON
        self.bias = float(bias)
        self.batch_size = int(batch_size)
        self.eval()  # dropout off unless a training loop asks for train()

    # ---- construction ---------------------------------------------------------------
    @classmethod
    def from_lm(cls, lm: GPT, tokenizer: Tokenizer, head_init_std: float = 0.02,
                seed: int | None = None) -> RewardModel:
        """A reward model whose trunk is a COPY of `lm`'s weights (the LM is not modified).

        `seed` fixes the head's random initialisation (ensemble members differ by it).
        """
        rm = cls(lm.config, tokenizer)
        state = {k: v for k, v in lm.state_dict().items() if not k.startswith("lm_head.")}
        rm.transformer.load_state_dict(state)  # copies values into the RM's own tensors
        gen = torch.Generator().manual_seed(seed) if seed is not None else None
        with torch.no_grad():
            rm.head.weight.copy_(torch.randn(rm.head.weight.shape, generator=gen) * head_init_std)
            rm.head.bias.zero_()
        return rm

    # ---- tokens -> scores -----------------------------------------------------------
    def encode(self, prompts: Sequence[str], responses: Sequence[str]) -> list[list[int]]:
        """[bos] + prompt + response token ids, one list per pair (no padding yet)."""
        if isinstance(prompts, str) or isinstance(responses, str):
            raise TypeError("prompts and responses must be lists of str, not a single str")
        if len(prompts) != len(responses):
            raise ValueError(f"got {len(prompts)} prompts but {len(responses)} responses")
        seqs = []
        for i, (p, r) in enumerate(zip(prompts, responses)):
            ids = encode_prompt(self.tokenizer, p) + self.tokenizer.encode(r)
            if len(ids) > self.config.block_size:
                # No silent truncation: cutting either end would score a different text.
                raise ValueError(
                    f"pair {i} is {len(ids)} tokens ([bos] + prompt + response), longer than "
                    f"the reward model's block_size {self.config.block_size}")
            seqs.append(ids)
        return seqs

    def collate(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """Right-pad token lists: ids (B, T) int64, mask (B, T) bool, on the model's device."""
        ids, mask = pad_right(seqs, self.tokenizer.pad_id)
        dev = self.head.weight.device
        return ids.to(dev), mask.to(dev)

    def raw_scores_from_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                            readout_only: bool = False) -> torch.Tensor:
        """Raw (un-normalised) scores (B,), differentiable: what the training losses use.

        input_ids, attention_mask: (B, T), mask True/1 on real tokens. Right padding is the
        convention; the last real token is found by position, so left padding works too.
        readout_only: the last block computes only the last real token (same scores up to
        float rounding, about a quarter less work). The scoring methods use it; training
        does not, so that its arithmetic, and so the built assets, stay as they were.
        """
        mask = attention_mask.bool()  # (B, T)
        if not bool(mask.any(1).all()):
            raise ValueError("every row needs at least one real token (attention_mask all 0)")
        T = input_ids.shape[1]
        positions = torch.arange(T, device=input_ids.device).expand_as(mask)  # (B, T)
        last = torch.where(mask, positions, -1).max(1).values  # (B,) index of last real token
        if readout_only:
            h_last = self.transformer.trunk(input_ids, mask, readout=last)  # (B, C)
        else:
            hidden = self.transformer.trunk(input_ids, mask)  # (B, T, C)
            h_last = hidden[torch.arange(hidden.shape[0], device=hidden.device), last]  # (B, C)
        return self.head(h_last).squeeze(-1)  # (B,)

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Same as raw_scores_from_ids (nn.Module convention: model(ids, mask))."""
        return self.raw_scores_from_ids(input_ids, attention_mask)

    @contextmanager
    def _eval_mode(self):
        """Eval mode (no dropout) inside the block, the previous mode after it. Switches
        only when needed: Module.train() walks every submodule, which cost about a quarter
        of a small scoring forward when the envs switched on every call."""
        was_training = self.training
        if was_training:
            self.eval()
        try:
            yield
        finally:
            if was_training:
                self.train()

    @torch.no_grad()
    def features(self, prompts: Sequence[str], responses: Sequence[str],
                 batch_size: int | None = None) -> torch.Tensor:
        """What the scalar head reads: the trunk's hidden state at each pair's last real
        token, (B, C) float32 on CPU, in eval mode. A linear model on these frozen features
        is a reward model that trains in seconds (docs/labs/, lab 4)."""
        seqs = self.encode(prompts, responses)
        out = torch.empty(len(seqs), self.config.n_embd)
        bs = batch_size or self.batch_size
        with self._eval_mode():
            for i in range(0, len(seqs), bs):
                ids, mask = self.collate(seqs[i:i + bs])  # (b, T) each
                positions = torch.arange(ids.shape[1], device=ids.device).expand_as(mask)
                last = torch.where(mask, positions, -1).max(1).values  # (b,)
                out[i:i + bs] = self.transformer.trunk(ids, mask, readout=last).float().cpu()
        return out  # (B, C)

    @torch.no_grad()
    def raw_score(self, prompts: Sequence[str], responses: Sequence[str],
                  batch_size: int | None = None) -> torch.Tensor:
        """Raw scores (B,) float32 on CPU, in eval mode, in chunks of `batch_size`."""
        seqs = self.encode(prompts, responses)
        if not seqs:
            return torch.zeros(0)
        bs = batch_size or self.batch_size
        # Chunks of similar length waste less compute on padding; each row's score does not
        # depend on its batch-mates, so the order is restored afterwards.
        order = sorted(range(len(seqs)), key=lambda i: len(seqs[i]))
        out = torch.empty(len(seqs))
        with self._eval_mode():
            for i in range(0, len(seqs), bs):
                idx = order[i:i + bs]
                ids, mask = self.collate([seqs[j] for j in idx])
                out[idx] = self.raw_scores_from_ids(ids, mask, readout_only=True).float().cpu()
        return out  # (B,)

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str],
              batch_size: int | None = None) -> torch.Tensor:
        """Normalised rewards (B,): gain * raw + bias (SFT samples: mean 0, std 1)."""
        return self.gain * self.raw_score(prompts, responses, batch_size) + self.bias

    @torch.no_grad()
    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """Normalised rewards (B,) of sequences already tokenized as [bos] + prompt +
        response, (B, T) with mask True on the tokens to read (holes are allowed: masked
        tokens are skipped, as if absent). One forward, no chunking; what the envs call,
        skipping a decode/encode round trip per finished episode."""
        dev = self.head.weight.device  # the env's ids come from numpy, on the CPU
        with self._eval_mode():
            raw = self.raw_scores_from_ids(input_ids.to(dev), attention_mask.to(dev),
                                           readout_only=True)
        raw = raw.float().cpu()  # (B,)
        return self.gain * raw + self.bias  # (B,)

    def __repr__(self) -> str:
        c = self.config
        return (f"RewardModel(n_layer={c.n_layer}, n_embd={c.n_embd}, vocab={c.vocab_size}, "
                f"gain={self.gain:.4g}, bias={self.bias:.4g})")

    # ---- disk -------------------------------------------------------------------------
    def save(self, directory: str | Path, name: str = "reward", extra: dict | None = None
             ) -> None:
        """Write directory/name.safetensors + directory/name.json, each atomically.

        `extra` (JSON-serialisable) is stored under "extra" in the config, e.g. how the
        model was trained; it is informational only.
        """
        directory = Path(directory)
        check_name(name, "reward model name")
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "gpt_config": asdict(self.config),
                "gain": self.gain, "bias": self.bias, "extra": extra or {}}
        save_tensors(directory / f"{name}.safetensors", self.state_dict())
        write_json(directory / f"{name}.json", meta)

    @classmethod
    def load(cls, directory: str | Path, name: str = "reward",
             tokenizer: Tokenizer | None = None, map_location: str = "cpu") -> RewardModel:
        """Read a model written by save(); the tokenizer defaults to directory/tokenizer.json.

        Errors name the file at fault: missing files, a config that is not a reward-model
        config, missing/extra/mis-shaped tensors, and a tokenizer whose vocabulary size
        differs from the model's.
        """
        directory = Path(directory)
        check_name(name, "reward model name")
        cfg_path, w_path = directory / f"{name}.json", directory / f"{name}.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"reward model file not found: {p}")
        meta = read_json(cfg_path, "reward model config")
        if meta.get("format") != FORMAT:
            raise ValueError(f"{cfg_path}: not a reward-model config (expected \"format\": "
                             f"\"{FORMAT}\")")
        if meta.get("version") != FORMAT_VERSION:
            raise ValueError(f"{cfg_path}: unsupported version {meta.get('version')!r}, "
                             f"this code reads version {FORMAT_VERSION}")
        try:
            config = GPTConfig.from_dict(dict(meta["gpt_config"]), cfg_path)
            gain, bias = float(meta["gain"]), float(meta["bias"])
        except (TypeError, KeyError) as e:
            raise ValueError(f"could not parse reward model config {cfg_path}: {e!r}") from e
        if not (np.isfinite(gain) and np.isfinite(bias)):
            raise ValueError(f"{cfg_path}: gain and bias must be finite, got {gain}, {bias}")

        if tokenizer is None:
            tok_path = directory / "tokenizer.json"
            if not tok_path.is_file():
                raise FileNotFoundError(f"tokenizer file not found: {tok_path} (pass "
                                        f"tokenizer=... to RewardModel.load)")
            tokenizer = load_tokenizer_file(tok_path)
        if tokenizer.vocab_size != config.vocab_size:
            raise ValueError(f"tokenizer/model vocab mismatch: {cfg_path} has vocab_size "
                             f"{config.vocab_size}, the tokenizer has {tokenizer.vocab_size} "
                             f"tokens")
        tensors = load_tensors(w_path, map_location)
        rm = cls(config, tokenizer, gain=gain, bias=bias).to(map_location)
        check_tensors(tensors, rm.state_dict(), w_path, cfg_path)
        rm.load_state_dict(tensors)
        return rm.eval()


# ---- ensembles -------------------------------------------------------------------------------
ENSEMBLE_FORMAT = "textenv-reward-ensemble"
ENSEMBLE_MODES = ("mean", "conservative")


class RewardEnsemble(nn.Module):
    """Several reward models combined: `score()` is their mean, or mean - k * std
    ("conservative", Coste et al. 2023: penalises disagreement, where a policy has drifted
    away from the data). Each member is calibrated on its own, so the members' scores share
    one scale before they are combined. `reward_models.ensemble.train_ensemble` trains one.

    On disk: `directory/name.json` lists the members and the mode; member i is a reward
    model saved as `directory/<member>.safetensors` + `<member>.json`.
    """

    def __init__(self, models: Sequence[RewardModel],
                 mode: Literal["mean", "conservative"] = "mean", k: float = 1.0):
        super().__init__()
        if not models:
            raise ValueError("an ensemble needs at least one reward model")
        if mode not in ENSEMBLE_MODES:
            raise ValueError(f"unknown ensemble mode {mode!r}; valid: "
                             f"{', '.join(ENSEMBLE_MODES)}")
        vocab = {m.config.vocab_size for m in models}
        if len(vocab) > 1:
            raise ValueError(f"ensemble members disagree on vocab_size: {sorted(vocab)}")
        self.models = nn.ModuleList(models)
        self.mode, self.k = mode, float(k)
        self.tokenizer = models[0].tokenizer
        self.config = models[0].config

    def __len__(self) -> int:
        return len(self.models)

    def _combine(self, member_scores: torch.Tensor) -> torch.Tensor:
        """(M, B) -> (B,). Population std (correction=0): defined for one member too."""
        mean = member_scores.mean(0)
        if self.mode == "mean":
            return mean
        return mean - self.k * member_scores.std(0, correction=0)

    @torch.no_grad()
    def member_scores(self, prompts: Sequence[str], responses: Sequence[str],
                      batch_size: int | None = None) -> torch.Tensor:
        """(M, B): each member's normalised score."""
        return torch.stack([m.score(prompts, responses, batch_size) for m in self.models])

    @torch.no_grad()
    def score(self, prompts: Sequence[str], responses: Sequence[str],
              batch_size: int | None = None) -> torch.Tensor:
        """(B,): mean over members, minus k * their std in "conservative" mode."""
        return self._combine(self.member_scores(prompts, responses, batch_size))

    @torch.no_grad()
    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        """(B,) from token ids, as `RewardModel.score_ids`."""
        return self._combine(torch.stack([m.score_ids(input_ids, attention_mask)
                                          for m in self.models]))

    def save(self, directory: str | Path, name: str = "reward_ensemble") -> None:
        directory = Path(directory)
        check_name(name, "reward ensemble name")
        members = [f"{name}_{i}" for i in range(len(self.models))]
        for member, model in zip(members, self.models):
            model.save(directory, member)
        write_json(directory / f"{name}.json", {"format": ENSEMBLE_FORMAT, "version": 1,
                                                "mode": self.mode, "k": self.k,
                                                "members": members})

    @classmethod
    def load(cls, directory: str | Path, name: str = "reward_ensemble",
             tokenizer: Tokenizer | None = None, mode: str | None = None,
             k: float | None = None) -> RewardEnsemble:
        """Load an ensemble written by save(); `mode` / `k` override the stored ones.
        Member names must be plain file names inside `directory`."""
        directory = Path(directory)
        path = directory / f"{check_name(name, 'reward ensemble name')}.json"
        meta = read_json(path, "reward ensemble file")
        if meta.get("format") != ENSEMBLE_FORMAT:
            raise ValueError(f"{path}: not a reward-ensemble file (expected \"format\": "
                             f"\"{ENSEMBLE_FORMAT}\")")
        try:
            members = [str(m) for m in meta["members"]]
            stored_mode, stored_k = str(meta["mode"]), float(meta["k"])
        except (ValueError, TypeError, KeyError) as e:
            raise ValueError(f"could not parse reward ensemble file {path}: {e!r}") from e
        for m in members:
            check_name(m, f"{path}: member name")
        if tokenizer is None:
            tokenizer = load_tokenizer_file(directory / "tokenizer.json")
        models = [RewardModel.load(directory, m, tokenizer=tokenizer) for m in members]
        return cls(models, mode=mode or stored_mode, k=stored_k if k is None else k)


# ---- the presets -----------------------------------------------------------------------------
RewardFn = Callable[[list[str], list[str]], Any]
"""f(prompts, responses) -> array-like (B,) of float scores, one per pair.

A reward function may also have a method `score_ids(input_ids, attention_mask)` taking the
finished episodes as token ids, (B, T) int64 laid out [bos] + prompt + response and
right-padded, with a bool mask (B, T) that is False on padding and on pad/bos tokens inside
a response (the tokenizer drops those when decoding, so both views agree). The envs then
call it instead of `f`, which skips decoding each response and encoding it again; the
learned reward model does this."""

REWARD_PRESETS = ("learned", "gold", "ensemble")


def has_reward_model(assets_dir: str | Path) -> bool:
    """Whether `assets_dir` holds a reward model: `reward.json` (textenv's) or `reward/`
    (a Hugging Face model directory, textenv/hf.py)."""
    directory = Path(assets_dir)
    return (directory / "reward.json").is_file() or (directory / "reward" / "config.json").is_file()


def has_reward_ensemble(assets_dir: str | Path) -> bool:
    """Whether `assets_dir` holds a reward ensemble (`reward_ensemble.json`)."""
    return (Path(assets_dir) / "reward_ensemble.json").is_file()


@lru_cache(maxsize=8)
def load_reward_model(assets_dir: Path, device: str = "cpu") -> RewardModel:
    """The reward model `reward.*` of `assets_dir` on `device`, loaded once per (directory,
    device) and shared read-only between envs. A directory `reward/` saved with Hugging
    Face's save_pretrained is loaded as a `textenv.hf.HFRewardModel` (same interface)."""
    from textenv.hf import HFRewardModel, hf_dir  # imports `transformers` only when used

    if hf_dir(assets_dir, "reward") is not None:
        return HFRewardModel.load(assets_dir, "reward").requires_grad_(False).to(device)
    for name in ("reward.json", "reward.safetensors"):
        if not (assets_dir / name).is_file():
            raise FileNotFoundError(
                f"reward model file not found: {assets_dir / name} (reward='learned' needs it; "
                f"build the assets with `textenv build-assets`, or use reward='gold' or a "
                f"callable)")
    return RewardModel.load(assets_dir, "reward").requires_grad_(False).to(device)


@lru_cache(maxsize=8)
def load_reward_ensemble(assets_dir: Path, device: str = "cpu") -> RewardEnsemble:
    """The ensemble `reward_ensemble.json` of `assets_dir` on `device`, loaded once per
    (directory, device)."""
    if not has_reward_ensemble(assets_dir):
        raise FileNotFoundError(
            f"reward ensemble not found: {assets_dir / 'reward_ensemble.json'} "
            f"(reward='ensemble' needs one; train it with `textenv reward --n-models 3 "
            f"--out-dir {assets_dir}`, or use reward='learned' or 'gold')")
    return RewardEnsemble.load(assets_dir).requires_grad_(False).to(device)


class LearnedReward:
    """reward="learned" / "ensemble": a reward model's normalised score, from text or ids."""

    def __init__(self, reward_model: RewardModel | RewardEnsemble):
        self.reward_model = reward_model

    def __call__(self, prompts: list[str], responses: list[str]) -> torch.Tensor:
        return self.reward_model.score(prompts, responses)  # (B,)

    def score_ids(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.reward_model.score_ids(input_ids, attention_mask)  # (B,)


class GoldReward:
    """reward="gold": the task's ground-truth score of each (prompt, response).
    A class rather than a closure, so that an env using it can be pickled."""

    def __init__(self, task):
        if not hasattr(task, "gold_score"):
            raise ValueError(f"reward='gold' needs a task with gold_score; {task!r} has none")
        if not getattr(task, "has_gold", True):  # e.g. the user's data built without one
            raise ValueError(f"reward='gold' needs a gold scorer; {task!r} has none")
        self.task = task

    def __call__(self, prompts: list[str], responses: list[str]) -> list[float]:
        return [self.task.gold_score(p, r) for p, r in zip(prompts, responses)]


def make_reward_fn(reward: str | RewardFn, task, assets_dir: str | Path,
                   device: str = "cpu") -> RewardFn:
    """Resolve the `reward` argument of the envs into a batched scoring function (a reward
    model runs on `device`; its scores come back on the CPU)."""
    if callable(reward):
        return reward
    assets_dir = Path(assets_dir).resolve()
    if reward == "learned":
        return LearnedReward(load_reward_model(assets_dir, str(device)))
    if reward == "ensemble":
        return LearnedReward(load_reward_ensemble(assets_dir, str(device)))
    if reward == "gold":
        return GoldReward(task)
    raise ValueError(f"unknown reward {reward!r}; valid: {', '.join(map(repr, REWARD_PRESETS))} "
                     f"or a callable f(prompts, responses) -> scores")


def as_scores(values, n: int, where: str = "reward function") -> np.ndarray:
    """Reward-function output (list, numpy array or torch tensor) -> float64 array (n,);
    a wrong shape or a NaN/inf score raises, naming `where`."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().numpy()
    scores = np.asarray(values, dtype=np.float64).reshape(-1)
    if scores.shape != (n,):
        raise ValueError(f"{where} returned shape {scores.shape}, expected ({n},)")
    if not np.isfinite(scores).all():
        raise ValueError(f"{where} returned non-finite scores: {scores}")
    return scores
