"""The reward model: a GPT trunk plus a scalar head, read at the last real token.

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
shift or a scale), so after training `calibrate()` picks `gain` and `bias` so that samples
of the SFT policy score mean 0 and standard deviation 1. The RL code can then use one set
of hyper-parameters (KL coefficient, clipping) whatever reward model it is given.

Responses are encoded exactly as given: a terminated response ends with the word `<eos>`,
which the tokenizer maps to the EOS id, so the model sees whether the policy stopped.

On disk: `name.safetensors` (weights) + `name.json` (GPT config, gain, bias, ...),
each written atomically. Loading never executes code.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import asdict, fields
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from textenv.lm import encode_prompt, pad_right
from textenv.model import GPT, GPTConfig, _atomic_write, check_tensors
from textenv.tokenizer import Tokenizer, WordTokenizer

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
        with self._eval_mode():
            raw = self.raw_scores_from_ids(input_ids, attention_mask, readout_only=True)
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
        directory.mkdir(parents=True, exist_ok=True)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.state_dict().items()}
        meta = {"format": FORMAT, "version": FORMAT_VERSION, "gpt_config": asdict(self.config),
                "gain": self.gain, "bias": self.bias, "extra": extra or {}}
        text = json.dumps(meta, indent=2, sort_keys=True)
        _atomic_write(directory / f"{name}.safetensors", lambda p: save_file(tensors, p))
        _atomic_write(directory / f"{name}.json", lambda p: Path(p).write_text(text))

    @classmethod
    def load(cls, directory: str | Path, name: str = "reward",
             tokenizer: Tokenizer | None = None, map_location: str = "cpu") -> RewardModel:
        """Read a model written by save(); the tokenizer defaults to directory/tokenizer.json.

        Errors name the file at fault: missing files, a config that is not a reward-model
        config, missing/extra/mis-shaped tensors, and a tokenizer whose vocabulary size
        differs from the model's.
        """
        directory = Path(directory)
        cfg_path, w_path = directory / f"{name}.json", directory / f"{name}.safetensors"
        for p in (cfg_path, w_path):
            if not p.is_file():
                raise FileNotFoundError(f"reward model file not found: {p}")
        try:
            meta = json.loads(cfg_path.read_text())
            if not isinstance(meta, dict) or meta.get("format") != FORMAT:
                raise ValueError(f"not a reward-model config (expected \"format\": \"{FORMAT}\")")
            if meta.get("version") != FORMAT_VERSION:
                raise ValueError(f"unsupported version {meta.get('version')!r}, "
                                 f"this code reads version {FORMAT_VERSION}")
            raw_cfg = meta["gpt_config"]
            unknown = set(raw_cfg) - {f.name for f in fields(GPTConfig)}
            if unknown:
                raise ValueError(f"unknown gpt_config fields {sorted(unknown)}")
            config = GPTConfig(**raw_cfg)
            gain, bias = float(meta["gain"]), float(meta["bias"])
        except (ValueError, TypeError, KeyError, UnicodeDecodeError) as e:
            raise ValueError(f"could not parse reward model config {cfg_path}: {e!r}") from e

        if tokenizer is None:
            tok_path = directory / "tokenizer.json"
            if not tok_path.is_file():
                raise FileNotFoundError(f"tokenizer file not found: {tok_path} (pass "
                                        f"tokenizer=... to RewardModel.load)")
            tokenizer = WordTokenizer.load(tok_path)
        if tokenizer.vocab_size != config.vocab_size:
            raise ValueError(f"tokenizer/model vocab mismatch: {cfg_path} has vocab_size "
                             f"{config.vocab_size}, the tokenizer has {tokenizer.vocab_size} "
                             f"tokens")
        try:
            tensors = load_file(str(w_path), device=str(map_location))
        except Exception as e:  # safetensors raises its own error type on corrupt files
            raise ValueError(f"could not read weights file {w_path}: {e}") from e

        rm = cls(config, tokenizer, gain=gain, bias=bias).to(map_location)
        expected = {k: v.shape for k, v in rm.state_dict().items()}
        check_tensors(tensors, expected, w_path, cfg_path)
        rm.load_state_dict(tensors)
        return rm.eval()
