"""Tokenizers.

Every tokenizer in textenv follows the small `Tokenizer` protocol below, so the env,
the models and the agents never care which one they get. The default task uses
`WordTokenizer`: one token per whitespace-separated word of the task's own vocabulary
(a few hundred tokens, so generic RL algorithms can cope with the action space). The
user's own data (the `jsonl` task) gets a `WordTokenizer` when its vocabulary is closed and
a byte-level `BPETokenizer` (trained with the `tokenizers` library) otherwise.
`load_tokenizer_file` reads either kind from its tokenizer.json.
"""

from __future__ import annotations

import json
import os
import re
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


class BPETokenizer:
    """Byte-level BPE tokenizer for open vocabularies, trained with the `tokenizers` library.

    Ids 0..3 are `<pad> <bos> <eos> <unk>`, as in `WordTokenizer`; the other ids are the
    256 bytes and the merges learned from a corpus (GPT-2 style: every text encodes, with
    no unknown tokens). The special tokens are handled here, not by `tokenizers`: in a
    text they are words separated by single spaces (`"... done <eos>"`), which is how the
    env writes a terminated response. `decode` drops `<pad>` and `<bos>`, keeps `<eos>`
    and `<unk>` as those words, and gives back the encoded text exactly (the byte-level
    pre-tokenizer keeps spaces, newlines and any Unicode), except a leading space.

    On disk, tokenizer.json is the `tokenizers` library's own JSON
    (`tokenizers.Tokenizer.from_file` reads it too). Needs the optional dependency
    `tokenizers` (`pip install "textenv[jsonl]"`).
    """

    _SPECIALS_IN_TEXT = re.compile(" ?(" + "|".join(map(re.escape, SPECIAL_TOKENS)) + ") ?")

    def __init__(self, hf_tokenizer):
        ids = [hf_tokenizer.token_to_id(t) for t in SPECIAL_TOKENS]
        if ids != [0, 1, 2, 3]:
            raise ValueError(f"a BPE tokenizer needs <pad> <bos> <eos> <unk> as ids 0..3, got "
                             f"{dict(zip(SPECIAL_TOKENS, ids))}")
        self.hf = hf_tokenizer
        self.pad_id, self.bos_id, self.eos_id, self.unk_id = 0, 1, 2, 3
        self.vocab_size: int = hf_tokenizer.get_vocab_size()
        self._special_ids = {t: i for i, t in enumerate(SPECIAL_TOKENS)}

    @classmethod
    def train(cls, texts: Sequence[str], vocab_size: int = 1000, min_frequency: int = 2
              ) -> BPETokenizer:
        """Learn merges from `texts` until `vocab_size` tokens (fewer if the texts run out
        of pairs seen `min_frequency` times). Deterministic for the same texts."""
        tk = _tokenizers()
        if vocab_size < 260:
            raise ValueError(f"vocab_size must be >= 260 (4 special tokens + 256 bytes), got "
                             f"{vocab_size}")
        hf = tk.Tokenizer(tk.models.BPE())
        hf.pre_tokenizer = tk.pre_tokenizers.ByteLevel(add_prefix_space=True)
        hf.decoder = tk.decoders.ByteLevel()
        trainer = tk.trainers.BpeTrainer(
            vocab_size=vocab_size, min_frequency=min_frequency, show_progress=False,
            special_tokens=list(SPECIAL_TOKENS),
            initial_alphabet=tk.pre_tokenizers.ByteLevel.alphabet())
        # Special-token words are not text to learn merges from.
        hf.train_from_iterator([cls._SPECIALS_IN_TEXT.sub(" ", t) for t in texts], trainer)
        return cls(hf)

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        # re.split with a group: even items are plain text, odd items special-token words.
        for n, part in enumerate(self._SPECIALS_IN_TEXT.split(text)):
            if n % 2:
                ids.append(self._special_ids[part])
            elif part:
                ids.extend(self.hf.encode(part, add_special_tokens=False).ids)
        return ids

    def decode(self, ids: Sequence[int]) -> str:
        pieces: list[str] = []
        run: list[int] = []  # consecutive plain-text ids, decoded together (bytes span ids)

        def flush():
            if run:
                text = self.hf.decode(run, skip_special_tokens=False)
                pieces.append(text[1:] if text.startswith(" ") else text)  # the prefix space
                run.clear()

        for i in ids:
            i = int(i)
            if not 0 <= i < self.vocab_size:
                raise ValueError(f"token id {i} outside [0, {self.vocab_size})")
            if i == self.pad_id or i == self.bos_id:
                continue
            if i in (self.eos_id, self.unk_id):
                flush()
                pieces.append(SPECIAL_TOKENS[i])
            else:
                run.append(i)
        flush()
        return " ".join(pieces)

    # ---- persistence: the `tokenizers` JSON, never pickle ---------------------------------
    def save(self, path: str | os.PathLike) -> None:
        atomic_write(Path(path), self.hf.to_str(pretty=True))

    @classmethod
    def load(cls, path: str | os.PathLike) -> BPETokenizer:
        path = Path(path)
        if not path.exists():
            raise FileNotFoundError(f"tokenizer file not found: {path}")
        try:
            return cls(_tokenizers().Tokenizer.from_str(path.read_text(encoding="utf-8")))
        except Exception as e:  # tokenizers raises its own exception type on bad JSON
            raise ValueError(f"corrupt tokenizer file {path}: {e}") from e


def _tokenizers():
    """The `tokenizers` package, imported on first use (an optional dependency)."""
    try:
        import tokenizers
    except ImportError as e:
        raise ImportError("BPE tokenizers need the `tokenizers` package: pip install "
                          "\"textenv[jsonl]\" (or pip install tokenizers)") from e
    return tokenizers


def load_tokenizer_file(path: str | os.PathLike) -> Tokenizer:
    """A tokenizer.json of either kind: `WordTokenizer`'s own JSON (`"type": "word"`) or the
    `tokenizers` JSON of a `BPETokenizer` (`"model": {"type": "BPE", ...}`)."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"tokenizer file not found: {path}")
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise ValueError(f"corrupt tokenizer file {path}: {e}") from e
    if isinstance(payload, dict) and payload.get("type") == "word":
        return WordTokenizer.load(path)
    if isinstance(payload, dict) and isinstance(payload.get("model"), dict) \
            and payload["model"].get("type") == "BPE":
        return BPETokenizer.load(path)
    raise ValueError(f"corrupt tokenizer file {path}: neither a word tokenizer (\"type\": "
                     f"\"word\") nor a BPE tokenizer of the `tokenizers` library")
