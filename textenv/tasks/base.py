"""The `Task` protocol: what the env, the pipeline and the agents need from a task.

A task is a small synthetic language with instructions (prompts), a ground-truth
`gold_score`, imperfect demonstrations for supervised fine-tuning, and an unconditioned
pretraining corpus. Texts are whitespace-separated words of `vocabulary()`; a response
ends with the word `<eos>` when the policy terminated it.
"""

from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np


@runtime_checkable
class Task(Protocol):
    name: str
    max_prompt_tokens: int
    """Longest prompt the task writes, in tokens."""
    max_response_tokens: int
    """A response length limit that leaves room for the longest good response."""

    def vocabulary(self) -> list[str]:
        """Every word the task can write (without the special tokens)."""

    def prompts(self, split: str = "train") -> list[str]:
        """Every prompt of a split, in a fixed order. Splits: `"train"` (every training stage
        draws from it: SFT demonstrations, reward-model data, RL prompts); `"eval"` (prompts
        held out from training whose instruction was seen in training: in-distribution);
        `"test"` (instructions never seen by any training stage: generalisation)."""

    def sample_prompt(self, rng: np.random.Generator, split: str = "train") -> str:
        """A prompt of `split`, drawn with `rng`."""

    def demonstration(self, prompt: str, rng: np.random.Generator) -> str:
        """An imperfect human-style demonstration for `prompt` (ends with `<eos>`)."""

    def best_response(self, prompt: str, rng: np.random.Generator) -> str:
        """A response that follows the instruction perfectly (ends with `<eos>`)."""

    def corpus(self, n: int, rng: np.random.Generator) -> list[str]:
        """`n` unconditioned pretraining documents (each ends with `<eos>`)."""

    def gold_score(self, prompt: str, response: str) -> float:
        """Ground truth in [0, 1]: how well `response` follows `prompt`."""
