"""`jsonl`: the user's own data as a task.

The task is built from an assets directory that `textenv build-assets --task jsonl ...`
(`reward_models.user_data`) wrote from the user's files. Besides the models and the
tokenizer, that directory holds:

    task.json      the prompts by split, the demonstrations, the reward callable's name
                   and the length limits
    corpus.jsonl   the pretraining documents, one {"text": ...} per line (read on first use)

Prompts. Every prompt is in one of the splits "train", "eval" and "test": the one its line
in the user's prompt file named, or, for a line without "split", one chosen at build time
(see `reward_models.user_data.assign_splits`).

Gold score. With a reward callable (`--reward module:function`), `gold_score(prompt,
response)` is `function(prompt, response)`: the module is imported when the task is built
and again whenever it is loaded, so it must be importable (installed, or on PYTHONPATH).
The response is the text the env decodes: it ends with the word `<eos>` when the policy
stopped. Without a callable the task has no ground truth: `has_gold` is False,
`gold_score` returns NaN (so `info["gold_score"]` is NaN and the agents' gold metrics read
nan), and `reward="gold"` is refused with an error.
"""

from __future__ import annotations

import importlib
import json
import math
from collections.abc import Callable
from functools import lru_cache
from pathlib import Path

import numpy as np

TASK_FORMAT = "textenv-jsonl-task"
SPLITS = ("train", "eval", "test")


def import_callable(spec: str) -> Callable[[str, str], float]:
    """The function named by `"module:function"` (dotted names allowed on both sides). A
    failure raises ValueError naming the spec and the import error."""
    module_name, sep, attr = spec.partition(":") if isinstance(spec, str) else ("", "", "")
    if not (sep and module_name and attr):
        raise ValueError(f"reward callable {spec!r} must be written module:function, e.g. "
                         f"my_rewards:score")
    try:
        obj = importlib.import_module(module_name)
    except Exception as e:  # ImportError, or whatever the module raises when it runs
        raise ValueError(f"reward callable {spec!r}: cannot import module {module_name!r}: "
                         f"{type(e).__name__}: {e} (the module must be importable: installed, "
                         f"or its directory on PYTHONPATH)") from e
    try:
        for part in attr.split("."):
            obj = getattr(obj, part)
    except AttributeError as e:
        raise ValueError(f"reward callable {spec!r}: module {module_name!r} has no "
                         f"{attr!r}: {e}") from e
    if not callable(obj):
        raise ValueError(f"reward callable {spec!r} is a {type(obj).__name__}, not callable")
    return obj


@lru_cache(maxsize=8)
def _read_task_file(path: Path, mtime_ns: int) -> dict:
    """task.json, parsed once per version of the file (many envs load one task)."""
    try:  # plain json, not textenv.storage: task modules stay free of torch
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise ValueError(f"could not parse jsonl task file {path}: {e}") from e
    if not isinstance(meta, dict) or meta.get("format") != TASK_FORMAT:
        raise ValueError(f"{path}: not a jsonl task file (expected \"format\": "
                         f"\"{TASK_FORMAT}\"); build it with `textenv build-assets --task jsonl`")
    try:
        prompts = {s: [str(p) for p in meta["prompts"][s]] for s in SPLITS}
        demos = [(str(p), str(r)) for p, r in meta["demonstrations"]]
        int(meta["max_prompt_tokens"]), int(meta["max_response_tokens"])
    except (KeyError, TypeError, ValueError) as e:
        raise ValueError(f"could not parse jsonl task file {path}: {e!r}") from e
    return {**meta, "prompts": prompts, "demonstrations": demos}


class JsonlTask:
    """The user's prompts, demonstrations and reward callable, read from `assets_dir`."""

    name = "jsonl"
    needs_assets_dir = True

    def __init__(self, assets_dir: str | Path):
        self.assets_dir = Path(assets_dir).resolve()
        path = self.assets_dir / "task.json"
        if not path.is_file():
            raise FileNotFoundError(f"jsonl task file not found: {path} (build the directory "
                                    f"with `textenv build-assets --task jsonl --prompts FILE "
                                    f"--out-dir {assets_dir}`)")
        meta = _read_task_file(path, path.stat().st_mtime_ns)
        self._prompts: dict[str, list[str]] = meta["prompts"]
        self.max_prompt_tokens = int(meta["max_prompt_tokens"])
        self.max_response_tokens = int(meta["max_response_tokens"])
        self.tokenizer_kind: str = meta.get("tokenizer", "")
        self._vocabulary: list[str] = list(meta.get("vocabulary", []))
        self._demos: dict[str, list[str]] = {}
        for p, r in meta["demonstrations"]:
            self._demos.setdefault(p, []).append(r)
        self.reward_spec: str | None = meta.get("reward")
        self._reward = import_callable(self.reward_spec) if self.reward_spec else None
        self._corpus: list[str] | None = None

    @property
    def has_gold(self) -> bool:
        """Whether `gold_score` is the user's callable (False: it returns NaN)."""
        return self._reward is not None

    def __repr__(self) -> str:
        gold = (f"gold {self.reward_spec}" if self._reward else
                "no reward callable: rebuild with --reward module:function for a gold score")
        return f"JsonlTask({str(self.assets_dir)!r}, {gold})"

    # ---- the Task protocol ------------------------------------------------------------
    def vocabulary(self) -> list[str]:
        """The distinct whitespace-separated words of the user's texts (sorted)."""
        return list(self._vocabulary)

    def prompts(self, split: str = "train") -> list[str]:
        if split not in SPLITS:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return list(self._prompts[split])

    def sample_prompt(self, rng: np.random.Generator, split: str = "train") -> str:
        prompts = self._prompts.get(split)
        if prompts is None:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(SPLITS)}")
        return prompts[int(rng.integers(len(prompts)))]

    def demonstration(self, prompt: str, rng: np.random.Generator) -> str:
        """One of the user's demonstrations for `prompt` (ends with `<eos>`)."""
        demos = self._demos.get(prompt)
        if not demos:
            raise ValueError(f"no demonstration for prompt {prompt!r} in {self.assets_dir}")
        return demos[int(rng.integers(len(demos)))]

    def best_response(self, prompt: str, rng: np.random.Generator) -> str:
        """The user's demonstrations are the best responses known."""
        return self.demonstration(prompt, rng)

    def corpus(self, n: int, rng: np.random.Generator) -> list[str]:
        """`n` documents drawn (with replacement) from the pretraining corpus."""
        if self._corpus is None:
            path = self.assets_dir / "corpus.jsonl"
            with open(path, encoding="utf-8") as f:
                self._corpus = [json.loads(line)["text"] for line in f if line.strip()]
        if not self._corpus:
            raise ValueError(f"empty pretraining corpus in {self.assets_dir / 'corpus.jsonl'}")
        return [self._corpus[i] for i in rng.integers(len(self._corpus), size=n)]

    def gold_score(self, prompt: str, response: str) -> float:
        """The user's callable on (prompt, response); NaN when there is none."""
        if self._reward is None:
            return math.nan
        value = self._reward(prompt, response)
        try:
            return float(value)
        except (TypeError, ValueError) as e:
            raise ValueError(f"reward callable {self.reward_spec!r} returned {value!r}, not a "
                             f"number") from e
