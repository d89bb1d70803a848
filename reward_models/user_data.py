"""Assets from the user's own files: the build of the `jsonl` task.

    textenv build-assets --task jsonl --prompts prompts.jsonl [--corpus corpus.jsonl] \\
        [--demos demos.jsonl] [--preferences prefs.jsonl] [--reward my_rewards:score] \\
        --out-dir my_assets

    env = gym.make("TextGen-v0", task="jsonl", assets_dir="my_assets")

The files, one JSON object per line (blank lines allowed; any other bad line stops the
build with `file:line: what is wrong`, nothing is skipped):

    --prompts      {"prompt": str, "split": "train" | "eval" | "test"}   (split optional)
    --demos        {"prompt": str, "response": str}     demonstrations for SFT
    --corpus       {"text": str}                        pretraining documents
    --preferences  {"prompt", "chosen", "rejected"} or {"prompt", "responses", "ranking"}
                   (reward_models/data.py), to train the learned reward model
    --reward       module:function, f(prompt, response) -> float: the task's gold score

The stages, in order, with one seed:

    1. read and check every file, import the reward callable and call it once;
    2. the tokenizer (`choose_tokenizer`): word-level for a closed vocabulary, else BPE;
    3. pretrain a base LM on the corpus (without one: on the texts of the other files);
    4. SFT on the demonstrations (without any: the SFT policy is a copy of the base LM);
    5. with preferences: a reward model from the SFT trunk, trained on them, calibrated
       on SFT samples of the train prompts (mean 0, std 1);
    6. quality.json (measured on this build) and build_config.json.

Responses get the word `<eos>` appended (unless they end with it): a demonstration or a
ranked response is a finished response, and the env writes a finished one that way.

Nothing is half-written: the build writes into a fresh hidden directory beside --out-dir
and renames it into place at the end; on any error the hidden directory is removed and
--out-dir is as it was. A rebuild replaces a previous jsonl build; any other non-empty
directory is refused.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from reward_models.data import PairwiseRecord, RankedRecord, read_preferences
from reward_models.train import RMTrainConfig, calibrate, train_reward_model
from textenv.lm import (
    encode_prompt,
    generate_text,
    make_pretrain_batch,
    make_sft_batch,
    perplexity,
    train_lm,
)
from textenv.model import GPT, GPTConfig
from textenv.rewards import RewardModel
from textenv.storage import atomic_write
from textenv.tasks.jsonl import SPLITS, TASK_FORMAT, JsonlTask, import_callable
from textenv.tokenizer import SPECIAL_TOKENS, BPETokenizer, Tokenizer, WordTokenizer


@dataclass
class UserDataConfig:
    """Build the assets of the `jsonl` task from your own files: tokenizer, base LM, SFT
    policy, reward model (with --preferences), quality.json. Each file is JSONL; a bad
    line stops the build with file:line. Load the result with
    gym.make("TextGen-v0", task="jsonl", assets_dir=OUT_DIR)."""

    prompts: Path
    """Prompts, one {"prompt": str, "split": "train"|"eval"|"test"} per line ("split"
    optional: lines without one are split by a hash of their text, see the docs)."""
    out_dir: Path
    """Where to write the assets (replaced as a whole at the end of the build)."""
    task: Literal["jsonl"] = "jsonl"
    """Always jsonl (so that `textenv build-assets --task jsonl ...` reaches this command)."""
    corpus: Path | None = None
    """Pretraining documents, one {"text": str} per line (default: the texts of the other
    files)."""
    demos: Path | None = None
    """Demonstrations, one {"prompt": str, "response": str} per line, for SFT (default: no
    SFT, the SFT policy is the base LM)."""
    preferences: Path | None = None
    """Preferences (pairwise {"prompt", "chosen", "rejected"} and/or ranked {"prompt",
    "responses", "ranking"}) to train the learned reward model (reward="learned")."""
    reward: str | None = None
    """Reward callable module:function, f(prompt, response) -> float: the gold score
    (reward="gold" and info["gold_score"]). Its module must stay importable."""
    tokenizer: Literal["auto", "word", "bpe"] = "auto"
    """auto: word-level if every text is words separated by single spaces and there are at
    most --word-vocab-limit distinct words, else BPE."""
    word_vocab_limit: int = 2000
    """Largest number of distinct words for which auto picks the word-level tokenizer."""
    bpe_vocab_size: int = 1000
    """BPE vocabulary size (an upper bound: small corpora stop sooner)."""
    max_response_tokens: int | None = None
    """The env's response length limit (default: the longest demonstration or preference
    response, with <eos>; 32 without either)."""
    seed: int = 0
    """One seed for the whole build."""
    threads: int = 1
    """torch threads."""
    n_layer: int = 3
    """Transformer blocks."""
    n_head: int = 4
    """Attention heads."""
    n_embd: int = 128
    """Width of the residual stream."""
    block_size: int = 64
    """Longest sequence the models accept (raised to fit the longest prompt + response)."""
    pretrain_steps: int = 1000
    """Pretraining optimizer steps."""
    sft_steps: int = 300
    """SFT optimizer steps."""
    batch_size: int = 32
    """Sequences per step (pretraining and SFT)."""
    pretrain_lr: float = 3e-3
    """Peak pretraining learning rate."""
    sft_lr: float = 1e-3
    """Peak SFT learning rate."""
    calibration_samples: int = 256
    """SFT samples on train prompts that set the reward model's mean 0, std 1."""
    eval_samples: int = 128
    """SFT samples on eval prompts for quality.json (EOS rate, length, gold)."""
    rm: RMTrainConfig = field(default_factory=RMTrainConfig)


# ---- reading the user's files ----------------------------------------------------------------
class UserDataError(ValueError):
    """A bad line in one of the user's files. Message: "path:line: reason"."""

    def __init__(self, path: str | os.PathLike, line: int, reason: str):
        self.path, self.line, self.reason = os.fspath(path), line, reason
        super().__init__(f"{self.path}:{line}: {reason}")

    def __reduce__(self):
        return (type(self), (self.path, self.line, self.reason))


def _check_file(path: Path, flag: str) -> None:
    if not Path(path).is_file():
        raise FileNotFoundError(f"{flag} file not found: {path}")


def read_objects(path: Path, required: tuple[str, ...], optional: tuple[str, ...] = ()
                 ) -> list[tuple[int, dict]]:
    """(line number, object) for every non-blank line, each a JSON object with the
    `required` keys (str values) and maybe the `optional` ones; anything else raises
    UserDataError naming the file and line."""
    out = []
    with open(path, "rb") as f:
        for line_no, raw in enumerate(f, start=1):
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as e:
                raise UserDataError(path, line_no, f"not valid UTF-8: {e}") from None
            if not text.strip():
                continue
            try:
                obj = json.loads(text)
            except ValueError as e:
                raise UserDataError(path, line_no, f"invalid JSON: {e}") from None
            if not isinstance(obj, dict):
                raise UserDataError(path, line_no, f"expected a JSON object, got "
                                                   f"{type(obj).__name__}")
            missing = [k for k in required if k not in obj]
            if missing:
                raise UserDataError(path, line_no, f"missing key {missing[0]!r} (each line "
                                                   f"needs {', '.join(map(repr, required))})")
            extra = sorted(set(obj) - set(required) - set(optional))
            if extra:
                valid = ", ".join(map(repr, required + optional))
                raise UserDataError(path, line_no, f"unexpected key {extra[0]!r}; valid keys: "
                                                   f"{valid}")
            for key in obj:
                if not isinstance(obj[key], str):
                    raise UserDataError(path, line_no, f"{key!r} must be a str, got "
                                                       f"{type(obj[key]).__name__}")
            out.append((line_no, obj))
    return out


def check_text(text: str, what: str, response: bool = False) -> str:
    """`text` if it is usable: not blank, no special tokens (a response may end with the
    word <eos>). Raises ValueError saying what is wrong."""
    if not text.strip():
        raise ValueError(f"{what} is empty")
    words = text.split()
    if response and words[-1] == "<eos>":
        words = words[:-1]
    special = [w for w in words if w in SPECIAL_TOKENS]
    if special:
        raise ValueError(f"{what} contains the special token {special[0]} (reserved: "
                         f"{', '.join(SPECIAL_TOKENS)}; a response may only end with <eos>)")
    return text


def with_eos(response: str) -> str:
    """A finished response: `response` ending with the word <eos>."""
    return response if response.split()[-1:] == ["<eos>"] else f"{response} <eos>"


def read_prompts(path: Path) -> list[tuple[str, str | None, int]]:
    """(prompt, split or None, line) for each line of a prompt file."""
    out = []
    for line, obj in read_objects(path, ("prompt",), ("split",)):
        split = obj.get("split")
        if split is not None and split not in SPLITS:
            raise UserDataError(path, line, f"unknown split {split!r}; valid: "
                                            f"{', '.join(map(repr, SPLITS))}")
        try:
            out.append((check_text(obj["prompt"], "'prompt'"), split, line))
        except ValueError as e:
            raise UserDataError(path, line, str(e)) from None
    if not out:
        raise ValueError(f"{path}: no prompts")
    return out


def read_demos(path: Path) -> list[tuple[str, str]]:
    """(prompt, response ending with <eos>) for each line of a demonstration file."""
    out = []
    for line, obj in read_objects(path, ("prompt", "response")):
        try:
            out.append((check_text(obj["prompt"], "'prompt'"),
                        with_eos(check_text(obj["response"], "'response'", response=True))))
        except ValueError as e:
            raise UserDataError(path, line, str(e)) from None
    return out


def read_corpus(path: Path) -> list[str]:
    """The "text" of each line of a corpus file."""
    out = []
    for line, obj in read_objects(path, ("text",)):
        try:
            out.append(check_text(obj["text"], "'text'", response=True))
        except ValueError as e:
            raise UserDataError(path, line, str(e)) from None
    return out


def read_user_preferences(path: Path) -> list[PairwiseRecord | RankedRecord]:
    """Preference records (file:line errors from reward_models.data) with every response
    ending with <eos>; each keeps its file:line for later errors."""
    out = []
    for r in read_preferences(path):
        try:
            check_text(r.prompt, "'prompt'")
            if isinstance(r, PairwiseRecord):
                out.append(PairwiseRecord(
                    r.prompt, with_eos(check_text(r.chosen, "'chosen'", response=True)),
                    with_eos(check_text(r.rejected, "'rejected'", response=True)),
                    source=r.source))
            else:
                responses = [with_eos(check_text(x, f"'responses[{i}]'", response=True))
                             for i, x in enumerate(r.responses)]
                out.append(RankedRecord(r.prompt, responses, r.ranking, source=r.source))
        except ValueError as e:
            raise ValueError(f"{r.source}: {e}") from None
    if not out:
        raise ValueError(f"{path}: no preference records")
    return out


def assign_splits(prompts: list[tuple[str, str | None, int]], path: Path
                  ) -> dict[str, list[str]]:
    """Prompts by split. A line's "split" is kept. Lines without one: ordered by the
    SHA-256 of their text, the first ceil(n / 10) go to "eval" and the next ceil(n / 10) to
    "test" (each only if no line named that split), the rest to "train": a stable choice
    that does not depend on the file's order. A prompt given twice is kept once; twice with
    different splits is an error. Every split must end up non-empty."""
    seen: dict[str, str | None] = {}
    for text, split, line in prompts:
        if text in seen and seen[text] != split:
            raise UserDataError(path, line, f"prompt {text!r} appears earlier with split "
                                            f"{seen[text]!r}, here with {split!r}")
        seen.setdefault(text, split)
    splits: dict[str, list[str]] = {s: [p for p, sp in seen.items() if sp == s] for s in SPLITS}
    unsplit = sorted((p for p, sp in seen.items() if sp is None),
                     key=lambda p: hashlib.sha256(p.encode("utf-8")).hexdigest())
    chosen: dict[str, str] = {}
    share = math.ceil(len(unsplit) / 10)
    for s in ("eval", "test"):
        if not splits[s]:
            for p in unsplit[:share]:
                chosen[p] = s
            unsplit = unsplit[share:]
    for p in unsplit:
        chosen[p] = "train"
    for p, sp in seen.items():  # file order inside each split
        if sp is None:
            splits[chosen[p]].append(p)
    empty = [s for s in SPLITS if not splits[s]]
    if empty:
        counts = ", ".join(f"{s}: {len(splits[s])}" for s in SPLITS)
        raise ValueError(f"{path}: split {empty[0]!r} has no prompts ({counts}); every split "
                         f"needs one: add prompts, or mark some lines \"split\": {empty[0]!r}")
    return splits


# ---- the tokenizer ---------------------------------------------------------------------------
def choose_tokenizer(texts: list[str], kind: str, word_vocab_limit: int, bpe_vocab_size: int
                     ) -> tuple[Tokenizer, str]:
    """(tokenizer, why). "auto" picks the word-level tokenizer when the vocabulary is
    closed: every text is words separated by single spaces (so joining the decoded words
    with spaces gives the text back) and there are at most `word_vocab_limit` distinct
    words; otherwise a byte-level BPE tokenizer trained on `texts`."""
    if kind not in ("auto", "word", "bpe"):
        raise ValueError(f"unknown tokenizer {kind!r}; valid: 'auto', 'word', 'bpe'")
    words = sorted({w for t in texts for w in t.split() if w not in SPECIAL_TOKENS})
    spaced = all(t == " ".join(t.split()) for t in texts)
    if kind == "auto":
        if not spaced:
            kind, why = "bpe", "auto: some texts are not words separated by single spaces"
        elif len(words) > word_vocab_limit:
            kind, why = "bpe", (f"auto: {len(words)} distinct words, more than "
                                f"word_vocab_limit={word_vocab_limit}")
        else:
            kind, why = "word", f"auto: closed vocabulary of {len(words)} words"
    else:
        why = f"asked for {kind}"
    if kind == "word":
        return WordTokenizer(words), why
    return BPETokenizer.train(texts, vocab_size=bpe_vocab_size), why


# ---- the build -------------------------------------------------------------------------------
def _documents(tokenizer: Tokenizer, texts: list[str], block_size: int) -> list[list[int]]:
    """[bos] + text + <eos>, cut into windows of at most block_size tokens."""
    docs = []
    for t in texts:
        ids = encode_prompt(tokenizer, with_eos(t))
        docs += [ids[i:i + block_size] for i in range(0, len(ids), block_size)]
    return [d for d in docs if len(d) > 1]  # a 1-token window predicts nothing


def _check_reward(spec: str, prompt: str, response: str):
    """Import the callable and call it once: a clear error now, not mid-training."""
    fn = import_callable(spec)
    try:
        value = float(fn(prompt, response))
    except Exception as e:
        raise ValueError(f"reward callable {spec!r} failed on a test call f({prompt!r}, "
                         f"{response!r}): {type(e).__name__}: {e}") from e
    if not math.isfinite(value):
        raise ValueError(f"reward callable {spec!r} returned {value} on a test call")


def _target_dir(out: Path) -> None:
    """Refuse to replace a directory that is not a jsonl build (the user's own files)."""
    if out.exists():
        if not out.is_dir():
            raise ValueError(f"--out-dir {out} exists and is not a directory")
        if any(out.iterdir()) and not (out / "task.json").is_file():
            raise ValueError(f"--out-dir {out} is not empty and holds no jsonl build "
                             f"(task.json); choose another directory")


def build_user_assets(cfg: UserDataConfig) -> dict:
    """`textenv build-assets --task jsonl`: every stage (see the module doc) into a hidden
    directory, renamed to cfg.out_dir at the end. Returns the quality numbers."""
    t_start = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    out = Path(cfg.out_dir).resolve()
    _target_dir(out)

    # 1. read everything first: a bad line fails in seconds, before any training.
    for flag, path in (("--prompts", cfg.prompts), ("--corpus", cfg.corpus),
                       ("--demos", cfg.demos), ("--preferences", cfg.preferences)):
        if path is not None:
            _check_file(path, flag)
    splits = assign_splits(read_prompts(cfg.prompts), cfg.prompts)
    demos = read_demos(cfg.demos) if cfg.demos else []
    corpus = read_corpus(cfg.corpus) if cfg.corpus else []
    prefs = read_user_preferences(cfg.preferences) if cfg.preferences else []
    if cfg.reward:
        _check_reward(cfg.reward, splits["train"][0], demos[0][1] if demos else "")
    pref_texts = [t for r in prefs for t in ([r.prompt, r.chosen, r.rejected]
                                             if isinstance(r, PairwiseRecord)
                                             else [r.prompt, *r.responses])]
    prompt_texts = [p for s in SPLITS for p in splits[s]]
    own_texts = prompt_texts + [f"{p} {r}" for p, r in demos] + pref_texts

    # 2. the tokenizer, and the lengths it gives
    tokenizer, why = choose_tokenizer(prompt_texts + [t for d in demos for t in d] + corpus
                                      + pref_texts, cfg.tokenizer, cfg.word_vocab_limit,
                                      cfg.bpe_vocab_size)
    kind = "word" if isinstance(tokenizer, WordTokenizer) else "bpe"
    print(f"tokenizer: {kind} ({why}), {tokenizer.vocab_size} tokens")
    all_prompts = prompt_texts + [p for p, _ in demos] + [r.prompt for r in prefs]
    max_prompt = max(len(tokenizer.encode(p)) for p in all_prompts)
    responses = [r for _, r in demos] + [t for r in prefs for t in
                                         ((r.chosen, r.rejected) if isinstance(r, PairwiseRecord)
                                          else r.responses)]
    longest = max((len(tokenizer.encode(r)) for r in responses), default=0)
    max_response = cfg.max_response_tokens or longest or 32
    block_size = max(cfg.block_size, 1 + max_prompt + max(max_response, longest))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.build-"))
    try:
        tokenizer.save(tmp / "tokenizer.json")
        corpus_texts = corpus or own_texts
        atomic_write(tmp / "corpus.jsonl", "".join(json.dumps({"text": t}, ensure_ascii=False)
                                                   + "\n" for t in corpus_texts))
        words = sorted({w for t in prompt_texts + responses + corpus_texts for w in t.split()
                        if w not in SPECIAL_TOKENS})
        atomic_write(tmp / "task.json", json.dumps({
            "format": TASK_FORMAT, "version": 1, "prompts": splits,
            "demonstrations": demos, "reward": cfg.reward, "tokenizer": kind,
            "max_prompt_tokens": max_prompt, "max_response_tokens": max_response,
            "vocabulary": words}, indent=1, ensure_ascii=False))
        task = JsonlTask(tmp)  # as the env will load it (imports the callable again)
        quality = {"tokenizer": kind, "tokenizer_choice": why, "vocab_size": tokenizer.vocab_size,
                   "prompts_train": len(splits["train"]), "prompts_eval": len(splits["eval"]),
                   "prompts_test": len(splits["test"]), "demonstrations": len(demos),
                   "corpus_documents": len(corpus), "preference_records": len(prefs),
                   "max_prompt_tokens": max_prompt, "max_response_tokens": max_response,
                   "block_size": block_size, "gold": cfg.reward}

        # 3. the base LM
        rng = np.random.default_rng(cfg.seed)
        docs = _documents(tokenizer, [corpus_texts[i] for i in rng.permutation(len(corpus_texts))],
                          block_size)
        n_val = len(docs) // 20 if len(docs) >= 20 else 0  # 5% held out for the perplexity
        val_docs, train_docs = docs[:n_val], docs[n_val:]
        torch.manual_seed(cfg.seed)
        base = GPT(GPTConfig(vocab_size=tokenizer.vocab_size, block_size=block_size,
                             n_layer=cfg.n_layer, n_head=cfg.n_head, n_embd=cfg.n_embd))

        def pretrain_batch(r: np.random.Generator):
            idx = r.integers(len(train_docs), size=cfg.batch_size)
            return make_pretrain_batch([train_docs[i] for i in idx], tokenizer.pad_id)

        losses = train_lm(base, pretrain_batch, steps=cfg.pretrain_steps, lr=cfg.pretrain_lr,
                          seed=cfg.seed, desc="pretrain")
        base.save(tmp, "base")
        quality.update(base_params=base.num_params(),
                       base_final_train_loss=float(np.mean(losses[-50:])),
                       base_val_perplexity=(perplexity(base, val_docs, tokenizer.pad_id)
                                            if val_docs else None))

        # 4. the SFT policy
        sft = GPT(base.config)
        sft.load_state_dict(base.state_dict())
        if demos:
            pairs = [(encode_prompt(tokenizer, p), tokenizer.encode(r)) for p, r in demos]

            def sft_batch(r: np.random.Generator):
                idx = r.integers(len(pairs), size=cfg.batch_size)
                return make_sft_batch([pairs[i][0] for i in idx], [pairs[i][1] for i in idx],
                                      tokenizer.pad_id)

            losses = train_lm(sft, sft_batch, steps=cfg.sft_steps, lr=cfg.sft_lr,
                              seed=cfg.seed + 1, desc="sft")
            quality["sft_final_train_loss"] = float(np.mean(losses[-50:]))
        sft.eval()
        sft.save(tmp, "sft")
        quality.update(_sample_quality(sft, task, tokenizer, cfg))

        # 5. the reward model
        if prefs:
            quality.update(_reward_model(sft, task, tokenizer, prefs, cfg, tmp))

        quality["build_seconds"] = time.perf_counter() - t_start
        quality["torch_version"] = torch.__version__
        text = json.dumps(quality, indent=2, sort_keys=True)
        atomic_write(tmp / "quality.json", text)
        atomic_write(tmp / "build_config.json",
                     json.dumps(asdict(cfg), indent=2, default=str, sort_keys=True))
        _publish(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    print(text)
    print(f"assets written to {out}; gym.make(\"TextGen-v0\", task=\"jsonl\", "
          f"assets_dir={str(out)!r})")
    return quality


def _sample_quality(sft: GPT, task: JsonlTask, tokenizer: Tokenizer, cfg: UserDataConfig
                    ) -> dict:
    """EOS rate, length and (with a callable) gold of SFT samples on the eval prompts."""
    prompts = (task.prompts("eval") * cfg.eval_samples)[:cfg.eval_samples]
    responses = generate_text(sft, tokenizer, prompts, max_new_tokens=task.max_response_tokens,
                              generator=torch.Generator().manual_seed(cfg.seed + 3))
    quality = {"sft_eos_rate": float(np.mean([r.endswith("<eos>") for r in responses])),
               "sft_mean_tokens": float(np.mean([len(tokenizer.encode(r)) for r in responses]))}
    if task.has_gold:
        quality["sft_gold_mean"] = float(np.mean([task.gold_score(p, r)
                                                  for p, r in zip(prompts, responses)]))
    print("Samples of the SFT policy on eval prompts:")
    for p, r in list(zip(prompts, responses))[:3]:
        print(f"  {p!r} -> {r!r}")
    return quality


def _reward_model(sft: GPT, task: JsonlTask, tokenizer: Tokenizer, prefs, cfg: UserDataConfig,
                  directory: Path) -> dict:
    """Train the reward model on the preferences, calibrate it on SFT samples, save it."""
    from reward_models.pipeline import calibration_set  # the default build's sampler

    rm = RewardModel.from_lm(sft, tokenizer, head_init_std=cfg.rm.head_init_std,
                             seed=cfg.rm.seed + cfg.seed)
    result = train_reward_model(rm, prefs, cfg.rm)
    cal = calibrate(rm, *calibration_set(sft, tokenizer, task, cfg.calibration_samples,
                                         seed=cfg.seed + 2))
    rm.save(directory, "reward", extra={"trained_by": "reward_models.user_data",
                                        "data": str(cfg.preferences), "seed": cfg.seed,
                                        "best_step": result.best_step, "steps": result.steps})
    return {"rm_train_steps": result.steps, "rm_best_step": result.best_step,
            "rm_val_loss": result.best_val.get("loss"),
            "rm_val_accuracy": result.best_val.get("accuracy"),
            "rm_calibration_raw_std": cal["raw_std"], "rm_train_seconds": result.seconds}


def _publish(tmp: Path, out: Path) -> None:
    """Make the finished build `out` by renames: a previous build is moved aside first and
    removed only once the new one is in place."""
    os.chmod(tmp, 0o777 & ~_umask())  # mkdtemp makes 0700 directories
    if out.exists():
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask
