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
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import numpy as np
import torch

from reward_models.data import PairwiseRecord, PreferenceRecord, RankedRecord
from textenv.lm import generate_text
from textenv.model import GPT
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
                  batch_size: int = 256) -> list[str]:
    """One response per prompt (ending with `<eos>` when terminated), reproducible by seed."""
    gen = torch.Generator().manual_seed(seed)
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
    prompts = task.eval_prompts(cfg.prompts, seed=cfg.seed)
    runs = {"sft": (sft, 1.0), "drift": (sft, cfg.drift_temperature), **(policies or {})}
    for i, (name, (policy, temperature)) in enumerate(runs.items()):
        responses = sample_policy(policy, tokenizer, prompts, temperature=temperature,
                                  seed=cfg.seed + i, max_new_tokens=task.max_response_tokens)
        c = correlation_with_gold(rm, prompts, responses, task.gold_score)
        out[f"rm_spearman_gold_{name}"] = c["spearman"]
        out[f"rm_mean_score_{name}"] = c["rm_mean"]
        out[f"gold_mean_{name}"] = c["gold_mean"]
    return out
