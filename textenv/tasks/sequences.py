"""The from-scratch task, `sequences`: copy, reverse or sort a short sequence of symbols.

    prompt:   reverse a c b :
    response: b c a <eos>

A tiny language of 16 tokens in all (the 4 special tokens, the eight symbols `a`..`h`,
the three operations and `:`), small enough that a generic agent with no pretrained
model (stable-baselines3's `PPO("MlpPolicy", ...)` on one-hot observations,
`textenv.wrappers.OneHotObservation`) learns it from a random policy in minutes.

Instructions
------------
`OP s1 ... sn :` with OP one of `copy`, `reverse`, `sort` and 1 <= n <= `max_length`
symbols (repeats allowed). The answer is the sequence as it is, reversed, or sorted
alphabetically, then `<eos>`. `max_length` sets the difficulty: the number of distinct
prompts is 3 * (8 + 8² + ... + 8^max_length). The default, 3 (1752 prompts; the one
`TextGen-Sequences-v0` and the shipped assets use), is what SB3's MlpPolicy learns from
scratch in about a minute of CPU time (examples/sb3_from_scratch.py).

The gold score
--------------
Let t be the answer (n symbols), r the response's words before `<eos>` and `eos` whether
`<eos>` was emitted (words after it are ignored).

- exact: r == t and `eos`: 1.0;
- otherwise partial credit, at most 0.5 (so gold >= 0.9 means exactly right):

      0.5 * (matches / n) * 0.3 ** |len(r) - n| * (1 if eos else 0.5)

  where `matches` counts the positions i < min(len(r), n) with r[i] == t[i].

So one wrong symbol of three scores 0.33, and degenerate output stays low: empty or
`<eos>` alone 0 (no matches), one symbol too many or too few at most 0.15, a symbol
repeated up to the default length limit (cut off) at most 0.5 * 0.3² * 0.5 ≈ 0.02, the
right symbols in the wrong order only the positions that happen to match. A partial answer
is worth more the closer it is, which gives a from-scratch agent a gradient to follow.

Splits
------
By a stable hash of the symbol sequence (the same on every machine): `test` holds every
prompt (all three operations) of 15% of the sequences, so its sequences appear in no
training prompt, demonstration or corpus document; for half of the other sequences one
operation is held out into `eval` (the sequence was seen in training, this instruction
on it was not); the rest is `train`.

Demonstrations (the SFT data) follow the instruction imperfectly at the rates in
`DemoNoise`: a wrong operation, a wrong symbol, two neighbours swapped, a symbol dropped
or doubled. The pretraining corpus is bare symbol runs and instruction/answer documents
(train sequences only) whose answers are as noisy as the demonstrations.
"""

from __future__ import annotations

import hashlib
import itertools
from dataclasses import dataclass

import numpy as np

EOS_WORD = "<eos>"
SYMBOLS = ("a", "b", "c", "d", "e", "f", "g", "h")
OPS = ("copy", "reverse", "sort")
END = ":"
PARTIAL = 0.5  # the most a response that is not exactly right can score
LENGTH_FACTOR = 0.3  # per symbol too many or too few
CUT_OFF = 0.5  # the eos factor when the response was cut off (no `<eos>`)


def answer(op: str, seq: tuple[str, ...]) -> tuple[str, ...]:
    """The right answer to `op` on `seq`."""
    if op == "copy":
        return tuple(seq)
    if op == "reverse":
        return tuple(reversed(seq))
    if op == "sort":
        return tuple(sorted(seq))
    raise ValueError(f"unknown operation {op!r}; valid: {', '.join(OPS)}")


@dataclass
class DemoNoise:
    """How imperfectly the simulated labelers answer in SFT demonstrations (each applied
    independently; the demonstrations' mean gold is about 0.6)."""

    wrong_op: float = 0.15
    """Probability of answering with another operation (e.g. copying instead of sorting)."""
    wrong_symbol: float = 0.1
    """Per-symbol probability of writing another symbol."""
    swap: float = 0.1
    """Probability of swapping two neighbouring symbols."""
    drop_or_double: float = 0.1
    """Probability of dropping one symbol or writing it twice."""


class SequencesTask:
    """The `sequences` task: see the module docstring for the language and the gold score."""

    name = "sequences"
    test_fraction = 0.15
    """Sequences held out of every training stage (the `test` split)."""
    eval_fraction = 0.5
    """Of the other sequences, those with one operation held out (the `eval` split)."""

    def __init__(self, max_length: int = 3, demo_noise: DemoNoise | None = None):
        if isinstance(max_length, bool) or not isinstance(max_length, int) \
                or not 1 <= max_length <= 6:
            raise ValueError(f"max_length must be an integer in [1, 6], got {max_length!r}")
        self.max_length = max_length
        self.max_prompt_tokens = max_length + 2  # OP, symbols, ":"
        self.max_response_tokens = max_length + 2  # room for one symbol too many and <eos>
        self.demo_noise = demo_noise or DemoNoise()
        self.splits: dict[str, list[str]] = {"train": [], "eval": [], "test": []}
        self.train_sequences: list[tuple[str, ...]] = []
        for n in range(1, max_length + 1):
            for seq in itertools.product(SYMBOLS, repeat=n):
                key = " ".join(seq)
                if _stable_fraction("test " + key) < self.test_fraction:
                    self.splits["test"] += [self.format(op, seq) for op in OPS]
                    continue
                self.train_sequences.append(seq)
                held_out = None
                if _stable_fraction("eval " + key) < self.eval_fraction:
                    held_out = OPS[int(_stable_fraction("op " + key) * len(OPS))]
                for op in OPS:
                    self.splits["eval" if op == held_out else "train"].append(
                        self.format(op, seq))

    # ---- vocabulary and prompts ------------------------------------------------------
    def vocabulary(self) -> list[str]:
        return [*OPS, *SYMBOLS, END]

    def prompts(self, split: str = "train") -> list[str]:
        """Every prompt of a split, in a fixed order."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; valid: "
                             f"{', '.join(map(repr, self.splits))}")
        return list(self.splits[split])

    def sample_prompt(self, rng: np.random.Generator, split: str = "train") -> str:
        pool = self.splits[split] if split in self.splits else self.prompts(split)
        return pool[int(rng.integers(len(pool)))]

    @staticmethod
    def format(op: str, seq: tuple[str, ...]) -> str:
        return f"{op} {' '.join(seq)} {END}"

    def parse_prompt(self, prompt: str) -> tuple[str, tuple[str, ...]]:
        """(operation, symbols) of a prompt; ValueError unless it is exactly what the task
        writes: an operation, 1..max_length symbols, `:`."""
        words = prompt.split() if isinstance(prompt, str) else []
        op, seq = (words[0], tuple(words[1:-1])) if len(words) >= 3 else ("", ())
        ok = (op in OPS and words[-1] == END and 1 <= len(seq) <= self.max_length
              and all(s in SYMBOLS for s in seq) and prompt == self.format(op, seq))
        if not ok:
            raise ValueError(f"not a sequences prompt (expected an operation of "
                             f"{', '.join(OPS)}, 1 to {self.max_length} symbols of "
                             f"{' '.join(SYMBOLS)} and ':', e.g. 'reverse a c b :'): "
                             f"{prompt!r}")
        return op, seq

    # ---- responses ----------------------------------------------------------------------
    def best_response(self, prompt: str, rng: np.random.Generator) -> str:
        return " ".join([*answer(*self.parse_prompt(prompt)), EOS_WORD])

    def _noisy_answer(self, op: str, seq: tuple[str, ...], rng: np.random.Generator) -> str:
        noise = self.demo_noise
        if rng.random() < noise.wrong_op:
            op = str(rng.choice([o for o in OPS if o != op]))
        out = list(answer(op, seq))
        out = [str(rng.choice(SYMBOLS)) if rng.random() < noise.wrong_symbol else s
               for s in out]
        if len(out) >= 2 and rng.random() < noise.swap:
            i = int(rng.integers(len(out) - 1))
            out[i], out[i + 1] = out[i + 1], out[i]
        if rng.random() < noise.drop_or_double:
            i = int(rng.integers(len(out)))
            if len(out) >= 2 and rng.random() < 0.5:
                del out[i]
            else:
                out.insert(i, out[i])
        return " ".join([*out, EOS_WORD])

    def demonstration(self, prompt: str, rng: np.random.Generator) -> str:
        return self._noisy_answer(*self.parse_prompt(prompt), rng)

    def corpus(self, n: int, rng: np.random.Generator) -> list[str]:
        """Unconditioned documents: bare runs of symbols (`a c b <eos>`), and instructions
        with noisy answers (`sort a c b : a b c <eos>`), of training sequences only."""
        docs = []
        for _ in range(n):
            seq = self.train_sequences[int(rng.integers(len(self.train_sequences)))]
            if rng.random() < 0.3:
                docs.append(" ".join([*seq, EOS_WORD]))
            else:
                op = str(rng.choice(OPS))
                docs.append(f"{self.format(op, seq)} {self._noisy_answer(op, seq, rng)}")
        return docs

    # ---- the gold scorer ----------------------------------------------------------------
    def gold_score(self, prompt: str, response: str) -> float:
        target = answer(*self.parse_prompt(prompt))
        words = response.split()
        eos = EOS_WORD in words
        if eos:
            words = words[:words.index(EOS_WORD)]
        if eos and tuple(words) == target:
            return 1.0
        n = len(target)
        matches = sum(a == b for a, b in zip(words, target))
        return (PARTIAL * (matches / n) * LENGTH_FACTOR ** abs(len(words) - n)
                * (1.0 if eos else CUT_OFF))


def _stable_fraction(text: str) -> float:
    """A number in [0, 1) fixed by `text` alone (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64
