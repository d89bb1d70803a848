"""How good is a reward model? Measured against the labels and against the gold score.

* `rm_pairwise_accuracy_noisy`: on held-out rankings, the fraction of implied pairs the
  reward model orders like the (noisy) simulated labeler did. Its ceiling is below 1: the
  labeler itself disagrees with the truth on close pairs.
* `rm_pairwise_accuracy_gold`: on the same held-out responses, the fraction of pairs whose
  GOLD scores differ by at least `min_gold_gap` (0.1) that the reward model orders like
  gold. This is what we actually care about; the noise-free labels exist only because the
  task is synthetic.
* `rm_spearman_gold_*`: Spearman rank correlation between reward-model score and gold over
  samples of a policy, pooled over prompts. On SFT samples (the training distribution)
  and on a *drifted* policy (the SFT policy at temperature 1.5, later RL checkpoints):
  the correlation falling off-distribution is the start of reward over-optimisation.

Spearman is implemented here with numpy (ranks with ties averaged, then Pearson) so that
scipy is not a dependency.

`main(EvalRewardModelArgs)` at the end of this file is the command `textenv eval-reward`.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from itertools import combinations
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from reward_models.data import PairwiseRecord, PreferenceRecord, RankedRecord, read_preferences
from reward_models.degenerate import degenerate_suite, fraction_above, has_degenerate_suite
from textenv.assets import load_policy, load_tokenizer, resolve_assets_dir
from textenv.lm import generate_text
from textenv.model import GPT
from textenv.pipeline import generate_dialogues
from textenv.rewards import RewardEnsemble, RewardModel
from textenv.storage import write_json
from textenv.tasks import make_task
from textenv.tokenizer import Tokenizer

GoldFn = Callable[[str, str], float]


# ---- rank statistics (pure numpy) -------------------------------------------------------------
def rankdata(x: Sequence[float]) -> np.ndarray:
    """1-based ranks of `x` (N,), ties get the average of the ranks they span.

    [10, 20, 20, 30] -> [1, 2.5, 2.5, 4]   (like scipy.stats.rankdata(method="average"))
    """
    x = np.asarray(x, dtype=np.float64)
    if x.ndim != 1:
        raise ValueError(f"rankdata needs a 1-D array, got shape {x.shape}")
    order = np.argsort(x, kind="stable")  # (N,)
    sorted_x = x[order]
    # Start index of each run of equal values in sorted order.
    new_run = np.concatenate([[True], sorted_x[1:] != sorted_x[:-1]])  # (N,)
    run_id = np.cumsum(new_run) - 1  # (N,) which run each sorted element is in
    starts = np.flatnonzero(new_run)  # (R,)
    ends = np.append(starts[1:], len(x))  # (R,) one past the end
    avg_rank = (starts + ends + 1) / 2.0  # (R,) mean of 1-based ranks start+1 .. end
    ranks = np.empty(len(x))
    ranks[order] = avg_rank[run_id]
    return ranks


def spearman(x: Sequence[float], y: Sequence[float]) -> float:
    """Spearman rank correlation in [-1, 1]; NaN if either side is constant or N < 2."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if x.shape != y.shape or x.ndim != 1:
        raise ValueError(f"spearman needs two 1-D arrays of one length, got {x.shape}, {y.shape}")
    if len(x) < 2:
        return float("nan")
    rx, ry = rankdata(x), rankdata(y)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    denom = np.sqrt((rx ** 2).sum() * (ry ** 2).sum())
    return float((rx * ry).sum() / denom) if denom > 0 else float("nan")


def label_accuracy(scores: Sequence[Sequence[float]], records: Sequence[PreferenceRecord]
                   ) -> tuple[float, int]:
    """(accuracy, pairs): implied pairs of each record ordered like its label.

    `scores[n]` holds the model's score of each response of record n (for a pairwise
    record: [chosen, rejected]). Pairs of identical texts are skipped (the label is a coin
    flip there); ties in score count as wrong.
    """
    correct = total = 0
    for s, r in zip(scores, records, strict=True):
        texts, ranking = _texts_and_ranking(r)
        for i, j in combinations(range(len(ranking)), 2):  # ranking[i] was preferred
            better, worse = ranking[i], ranking[j]
            if texts[better] == texts[worse]:
                continue
            total += 1
            correct += int(s[better] > s[worse])
    return (correct / total if total else float("nan")), total


def gold_accuracy(scores: Sequence[Sequence[float]], gold: Sequence[Sequence[float]],
                  min_gap: float = 0.1) -> tuple[float, int]:
    """(accuracy, pairs): within each group, pairs whose gold differs by >= min_gap, ordered
    by the model like by gold (a tie in model score counts as wrong)."""
    correct = total = 0
    for s, g in zip(scores, gold, strict=True):
        for i, j in combinations(range(len(g)), 2):
            if abs(g[i] - g[j]) < min_gap:
                continue
            total += 1
            correct += int((s[i] - s[j]) * (g[i] - g[j]) > 0)
    return (correct / total if total else float("nan")), total


def _texts_and_ranking(r: PreferenceRecord) -> tuple[tuple[str, ...], tuple[int, ...]]:
    if isinstance(r, PairwiseRecord):
        return (r.chosen, r.rejected), (0, 1)
    if isinstance(r, RankedRecord):
        return r.responses, r.ranking
    raise TypeError(f"expected a preference record, got {type(r).__name__}")


# ---- with a model ---------------------------------------------------------------------------
def score_records(rm, records: Sequence[PreferenceRecord]) -> list[np.ndarray]:
    """The reward model's score of every response of every record (one batched call)."""
    prompts, responses, sizes = [], [], []
    for r in records:
        texts, _ = _texts_and_ranking(r)
        prompts += [r.prompt] * len(texts)
        responses += list(texts)
        sizes.append(len(texts))
    flat = rm.score(prompts, responses).numpy() if prompts else np.zeros(0)
    return np.split(flat, np.cumsum(sizes)[:-1]) if sizes else []


def sample_policy(policy: GPT, tokenizer: Tokenizer, prompts: Sequence[str], *,
                  max_new_tokens: int, temperature: float = 1.0, seed: int = 0,
                  batch_size: int = 256, task=None, split: str = "train") -> list[str]:
    """One response per prompt (ending with `<eos>` when terminated), reproducible by seed.
    For a multi-turn `task`: one whole dialogue with its simulated user per prompt (hidden
    preferences drawn from `seed` among the games of `split`)."""
    gen = torch.Generator().manual_seed(seed)
    if task is not None and hasattr(task, "user_reply"):
        return generate_dialogues(policy, tokenizer, task, list(prompts), temperature=temperature,
                                  generator=gen, seed=seed, split=split, batch_size=batch_size)
    return generate_text(policy, tokenizer, list(prompts), max_new_tokens=max_new_tokens,
                         temperature=temperature, generator=gen, batch_size=batch_size)


def correlation_with_gold(rm, prompts: Sequence[str], responses: Sequence[str],
                          gold_fn: GoldFn) -> dict:
    """Spearman(reward model, gold) over samples, plus their means."""
    scores = rm.score(prompts, responses).numpy()
    gold = np.array([gold_fn(p, r) for p, r in zip(prompts, responses)])
    return {"spearman": spearman(scores, gold), "rm_mean": float(scores.mean()),
            "gold_mean": float(gold.mean()), "samples": len(gold)}


@dataclass
class RMEvalConfig:
    prompts: int = 512
    """Held-out prompts sampled (one response each) for each Spearman correlation."""
    drift_temperature: float = 1.5
    """Sampling temperature of the 'drifted' policy (SFT policy, hotter)."""
    min_gold_gap: float = 0.1
    """Gold accuracy counts only pairs whose gold scores differ by at least this."""
    seed: int = 4321
    """Seed for prompts and sampling (fixed, so numbers compare across reward models)."""


def evaluate_reward_model(rm, task, sft: GPT, tokenizer: Tokenizer, cfg: RMEvalConfig,
                          heldout: Sequence[PreferenceRecord] = (),
                          policies: dict[str, tuple[GPT, float]] | None = None) -> dict:
    """All quality numbers of a reward model (or ensemble), keyed as in quality.json.

    heldout: held-out labelled records (from the SFT policy) for the two pairwise
        accuracies; skipped when empty.
    policies: extra {name: (policy, temperature)} to correlate on, e.g. RL checkpoints;
        each adds `rm_spearman_gold_<name>`.
    """
    out: dict = {}
    if heldout:
        scores = score_records(rm, heldout)
        acc, n = label_accuracy(scores, heldout)
        gold = [[task.gold_score(r.prompt, t) for t in _texts_and_ranking(r)[0]]
                for r in heldout]
        gacc, gn = gold_accuracy(scores, gold, cfg.min_gold_gap)
        out.update(rm_pairwise_accuracy_noisy=acc, rm_pairs_noisy=n,
                   rm_pairwise_accuracy_gold=gacc, rm_pairs_gold=gn)
    prompts = (task.prompts("eval") * cfg.prompts)[:cfg.prompts]  # every eval prompt, cycled
    runs = {"sft": (sft, 1.0), "drift": (sft, cfg.drift_temperature), **(policies or {})}
    for i, (name, (policy, temperature)) in enumerate(runs.items()):
        responses = sample_policy(policy, tokenizer, prompts, temperature=temperature,
                                  seed=cfg.seed + i, max_new_tokens=task.max_response_tokens,
                                  task=task, split="eval")
        c = correlation_with_gold(rm, prompts, responses, task.gold_score)
        out[f"rm_spearman_gold_{name}"] = c["spearman"]
        out[f"rm_mean_score_{name}"] = c["rm_mean"]
        out[f"gold_mean_{name}"] = c["gold_mean"]
    # Degenerate text (gold <= 0.2) on held-out prompts: how much of it does the reward
    # score above the SFT mean (0 after calibration)? A policy would find and exploit it.
    if not has_degenerate_suite(task):  # reviews only (no dialogues, no arithmetic)
        return out
    items = degenerate_suite(task, task.prompts("test"), np.random.default_rng(cfg.seed))
    scores = rm.score([p for p, _, _ in items], [r for _, r, _ in items]).tolist()
    above = fraction_above(items, scores, threshold=0.0)
    out["rm_degenerate_above_sft_fraction"] = above["all"]
    out["rm_degenerate_items"] = len(items)
    out.update({f"rm_degenerate_above_sft_{kind}": v for kind, v in above.items()
                if kind != "all"})
    return out


# ---- the command: `textenv eval-reward` ------------------------------------------------------
@dataclass
class EvalRewardModelArgs:
    """Evaluate a reward model (or ensemble) against the labels and against the gold score.

    Reports held-out pairwise accuracy against the noisy labels and against gold (pairs
    >= 0.1 apart in gold), and the Spearman correlation with gold on samples of the SFT
    policy (T=1), of a drifted policy (SFT at T=1.5) and of any extra policies. Without
    --heldout, fresh held-out rankings are made by the simulated labeler. Prints JSON and a
    markdown table."""

    rm_dir: Path | None = None
    """Directory of the reward model (with tokenizer.json; default: the task's shipped
    assets)."""
    name: str | None = None
    """File stem of the reward model (default "reward"), or of the ensemble's JSON with
    --ensemble (default "reward_ensemble")."""
    ensemble: bool = False
    """`name` is an ensemble written by RewardEnsemble.save."""
    ensemble_mode: Literal["mean", "conservative"] | None = None
    """Override the ensemble's mode."""
    policy_dir: Path | None = None
    """Directory of the SFT policy whose samples are the reference distribution (default:
    the task's shipped assets)."""
    policy_name: str = "sft"
    """The SFT policy's file stem."""
    policies: list[str] = field(default_factory=list)
    """Extra policies to correlate on, as DIR:NAME or DIR:NAME@TEMPERATURE (e.g. RL
    checkpoints saved with GPT.save)."""
    heldout: Path | None = None
    """Held-out JSONL preferences; default: fresh simulated rankings of eval prompts."""
    heldout_groups: int = 256
    """Fresh held-out rankings to make when --heldout is not given."""
    k: int = 4
    """Responses per fresh held-out ranking."""
    labeler_temperature: float = 0.1
    """Noise of the simulated labeler for fresh held-out rankings."""
    task: str = "reviews"
    """Task (prompts and gold score)."""
    eval: RMEvalConfig = field(default_factory=RMEvalConfig)
    out: Path | None = None
    """Write the results as JSON here."""
    threads: int = 2
    """torch threads."""


def parse_policy(spec: str) -> tuple[str, Path, str, float]:
    """'dir:name@1.0' -> (label, dir, name, temperature)."""
    temperature = 1.0
    if "@" in spec:
        spec, t = spec.rsplit("@", 1)
        temperature = float(t)
    if ":" not in spec:
        raise ValueError(f"policy {spec!r}: expected DIR:NAME[@TEMPERATURE]")
    directory, name = spec.rsplit(":", 1)
    label = f"{Path(directory).name}_{name}".replace("-", "_").replace(".", "_")
    return label, Path(directory), name, temperature


def markdown_table(results: dict) -> str:
    rows = [("held-out pairwise accuracy vs gold (gap >= 0.1)", "rm_pairwise_accuracy_gold"),
            ("held-out pairwise accuracy vs noisy labels", "rm_pairwise_accuracy_noisy")]
    rows += [(f"Spearman with gold, {k.removeprefix('rm_spearman_gold_')} samples", k)
             for k in results if k.startswith("rm_spearman_gold_")]
    lines = ["| metric | value |", "|---|---|"]
    lines += [f"| {label} | {results[key]:.3f} |" for label, key in rows if key in results]
    return "\n".join(lines)


def main(args: EvalRewardModelArgs) -> dict:
    """`textenv eval-reward`: every quality number of one reward model (or ensemble)."""
    from reward_models.pipeline import make_rankings  # here: pipeline imports this module

    torch.set_num_threads(args.threads)
    task = make_task(args.task)
    args.rm_dir = resolve_assets_dir(args.rm_dir, args.task)
    args.policy_dir = resolve_assets_dir(args.policy_dir, args.task)
    tokenizer = load_tokenizer(args.policy_dir)
    sft = load_policy(args.policy_name, args.policy_dir, tokenizer)
    if args.ensemble:
        rm = RewardEnsemble.load(args.rm_dir, args.name or "reward_ensemble",
                                 mode=args.ensemble_mode)
    else:
        rm = RewardModel.load(args.rm_dir, args.name or "reward")
    if args.heldout:
        heldout = read_preferences(args.heldout)
    else:
        heldout = make_rankings(sft, tokenizer, task, args.heldout_groups, args.k, split="eval",
                                labeler_temperature=args.labeler_temperature,
                                seed=args.eval.seed + 7)
    policies = {}
    for spec in args.policies:
        label, directory, name, temperature = parse_policy(spec)
        policies[label] = (GPT.load(directory, name), temperature)
    results = evaluate_reward_model(rm, task, sft, tokenizer, args.eval, heldout, policies)
    if args.out:
        write_json(args.out, results)
    print(json.dumps(results, indent=2, sort_keys=True))
    print()
    print(markdown_table(results))
    return results
