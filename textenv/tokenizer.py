"""Tokenizers.

Every tokenizer in textenv follows the small `Tokenizer` protocol below, so the env,
the models and the agents never care which one they get. The default task uses
`WordTokenizer`: one token per whitespace-separated word of the task's own vocabulary
(a few hundred tokens, so generic RL algorithms can cope with the action space).
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable

from textenv.storage import atomic_write

PAD, BOS, EOS, UNK = "<pad>", "<bos>", "<eos>", "<unk>"
SPECIAL_TOKENS = (PAD, BOS, EOS, UNK)


@runtime_checkable
class Tokenizer(Protocol):
    """What textenv needs from a tokenizer."""

    vocab_size: int
    pad_id: int
    bos_id: int
    eos_id: int

    def encode(self, text: str) -> list[int]: ...

    def decode(self, ids: Sequence[int]) -> str: ...


class WordTokenizer:
    """Word-level tokenizer over a closed vocabulary.

    Ids 0..3 are `<pad> <bos> <eos> <unk>`; the words follow in the given order.
    `encode` splits on whitespace. An unknown word raises `ValueError` naming it,
    unless the tokenizer was built with `allow_unk=True`, in which case it maps to `<unk>`.
    `decode` drops `<pad>` and `<bos>` and keeps `<eos>` as the literal word `<eos>`,
    so that a decoded response shows whether the policy terminated.
    """

    def __init__(self, words: Sequence[str], allow_unk: bool = False):
        words = [w for w in words if w not in SPECIAL_TOKENS]
        if len(set(words)) != len(words):
            dupes = sorted({w for w in words if words.count(w) > 1})
            raise ValueError(f"duplicate words in vocabulary: {dupes[:10]}")
        for w in words:
            if not w or any(c.isspace() for c in w):
                raise ValueError(f"vocabulary word {w!r} is empty or contains whitespace")
        self.itos: list[str] = list(SPECIAL_TOKENS) + list(words)
        self.stoi: dict[str, int] = {w: i for i, w in enumerate(self.itos)}
        self.allow_unk = allow_unk
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3

    @property
    def vocab_size(self) -> int:
        return len(self.itos)

    def encode(self, text: str) -> list[int]:
        ids = []
        for word in text.split():
            idx = self.stoi.get(word)
            if idx is None:
                if not self.allow_unk:
                    raise ValueError(
                        f"unknown word {word!r}: not in this tokenizer's vocabulary "
                        f"of {self.vocab_size} tokens"
                    )
                idx = self.unk_id
            ids.append(idx)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        words = []
        for i in ids:
            i = int(i)
            if i == self.pad_id or i == self.bos_id:
                continue
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside [0, {self.vocab_size})")
            words.append(self.itos[i])
        return " ".join(words)

    # ---- persistence: plain JSON, never pickle --------------------------------------
    def save(self, path: str | os.PathLike) -> None:
        path = Path(path)
        payload = {"type": "word", "allow_unk": self.allow_unk, "vocab": self.itos}
        atomic_write(path, json.dumps(payload, indent=1))

    @classmethod
    def load(cls, path: str | os.PathLike) -> WordTokenizer:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            payload = json.loads(path.read_text())
            vocab = payload["vocab"]
            if payload.get("type") != "word" or list(vocab[:4]) != list(SPECIAL_TOKENS):
                raise ValueError("not a word tokenizer with <pad> <bos> <eos> <unk> first")
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
            raise ValueError(f"corrupt tokenizer file {path}: {e}") from e
        return cls(vocab[4:], allow_unk=bool(payload.get("allow_unk", False)))
