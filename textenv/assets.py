"""The default assets shipped in `textenv/assets/<task>/` and how to load them.

Each built-in task has a directory of its own (`textenv/assets/reviews/`, ...) holding:

    tokenizer.json                 the task's tokenizer
    base.safetensors / base.json   the pretrained base LM
    sft.safetensors / sft.json     the SFT policy (also the frozen reference policy)
    reward.safetensors / .json     the default learned reward model
    quality.json                   measured quality of this build
    build_config.json              the config that produced them

They are written by `textenv build-assets` (docs/reward_models.md says how to rebuild).
Loading reads safetensors and JSON only: it never executes code. A missing or corrupt file
raises an error naming it.
"""

from __future__ import annotations

import json
from functools import lru_cache
from pathlib import Path

from textenv.model import GPT
from textenv.tokenizer import Tokenizer, load_tokenizer_file

ASSETS_ROOT = Path(__file__).resolve().parent / "assets"
"""The shipped assets: one directory per built-in task."""


def task_assets_dir(task: str = "reviews") -> Path:
    """The shipped assets of a built-in task: `textenv/assets/<task>/`."""
    return ASSETS_ROOT / task


ASSETS_DIR = task_assets_dir("reviews")
"""The default task's shipped assets."""


def resolve_assets_dir(assets_dir: str | Path | None, task) -> Path:
    """`assets_dir` as an absolute path; `None` means the shipped assets of `task` (a task
    name or a `Task` object)."""
    if assets_dir is not None:
        return Path(assets_dir).resolve()
    name = task if isinstance(task, str) else getattr(task, "name", None)
    if not isinstance(name, str):
        raise ValueError("assets_dir is required for a task object without a name")
    directory = task_assets_dir(name)
    if not directory.is_dir():
        raise FileNotFoundError(
            f"no shipped assets for task {name!r} in {directory}; pass assets_dir= (a directory "
            f"built by `textenv build-assets --task {name} --out-dir DIR`)")
    return directory


def _check(directory: Path, *names: str) -> None:
    for name in names:
        if not (directory / name).exists():
            raise FileNotFoundError(
                f"asset file not found: {directory / name} "
                f"(rebuild the default assets with `textenv build-assets`)")


def load_tokenizer(directory: str | Path = ASSETS_DIR) -> Tokenizer:
    """The tokenizer of `directory`: a `WordTokenizer` or a `BPETokenizer`, as its
    tokenizer.json says; without one, the tokenizer saved in a Hugging Face model directory
    `sft/` (else `base/`, else `reward/`), see textenv/hf.py."""
    directory = Path(directory)
    if not (directory / "tokenizer.json").exists():
        from textenv.hf import HFTokenizer, hf_tokenizer_dir  # optional `transformers`

        if (source := hf_tokenizer_dir(directory)) is not None:
            return HFTokenizer.from_dir(source)
    _check(directory, "tokenizer.json")
    return load_tokenizer_file(directory / "tokenizer.json")


def load_policy(name: str = "sft", directory: str | Path = ASSETS_DIR,
                tokenizer: Tokenizer | None = None) -> GPT:
    """Load a shipped LM (`"sft"` or `"base"`) and check it matches the tokenizer. A
    directory `name/` saved with Hugging Face's save_pretrained is loaded as a
    `textenv.hf.HFCausalLM` (same interface)."""
    directory = Path(directory)
    from textenv.hf import HFCausalLM, hf_dir  # imports `transformers` only when used

    if (path := hf_dir(directory, name)) is not None:
        tokenizer = tokenizer or load_tokenizer(directory)
        return HFCausalLM.from_dir(path, tokenizer)
    _check(directory, f"{name}.json", f"{name}.safetensors")
    model = GPT.load(directory, name)
    tokenizer = tokenizer or load_tokenizer(directory)
    check_vocab(model.config.vocab_size, tokenizer, directory / f"{name}.json")
    return model


def check_vocab(model_vocab: int, tokenizer: Tokenizer, where: Path | str) -> None:
    if model_vocab != tokenizer.vocab_size:
        raise ValueError(f"tokenizer/model vocab mismatch: {where} has vocab_size "
                         f"{model_vocab}, the tokenizer has {tokenizer.vocab_size} tokens")


def read_quality(directory: str | Path = ASSETS_DIR) -> dict:
    directory = Path(directory)
    _check(directory, "quality.json")
    return json.loads((directory / "quality.json").read_text())


def load_reference(directory: str | Path = ASSETS_DIR, device: str = "cpu") -> GPT:
    """The SFT policy of `directory` as the frozen reference policy on `device`: loaded once
    per (directory, device) and shared read-only (envs, wrappers and agents reuse one copy)."""
    return _load_reference(Path(directory).resolve(), str(device))


@lru_cache(maxsize=8)
def _load_reference(directory: Path, device: str) -> GPT:
    return load_policy("sft", directory).requires_grad_(False).to(device)
