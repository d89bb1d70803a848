"""A simulated human labeler, so the whole InstructGPT pipeline runs offline.

Real labelers are noisy: for two responses of similar quality they disagree with
each other and with themselves. We model that with a hidden *gold* score per
response (known to the environment, never shown to the reward model) and the
Bradley-Terry model of choice:

    P(a ranked above b) = sigmoid((gold(a) - gold(b)) / temperature)

``temperature`` is the labeler's noise level: 0 means a perfect labeler that
always sorts by gold; a large temperature makes rankings close to uniformly
random. This lets experiments ask "how good must labels be for RLHF to work?".

Sampling a full ranking of K responses uses the Plackett-Luce model (pick the best
with probability proportional to exp(gold / temperature), then the best of the
rest, and so on). The Gumbel trick samples it in one step: add independent
Gumbel(0, 1) noise to each utility ``gold / temperature`` and sort. Because the
difference of two independent Gumbel variables is logistic, every pair in the
sampled ranking follows exactly the Bradley-Terry probability above, whatever
the other responses are.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from reward_models.data import RankedRecord

GoldFn = Callable[[str, str], float]


def bradley_terry_ranking(
    gold_scores: np.ndarray, temperature: float, rng: np.random.Generator
) -> list[int]:
    """Sample a noisy ranking of responses, best first.

    Args:
        gold_scores: (K,) true quality of each response (higher is better).
        temperature: labeler noise, >= 0. For two responses with gold difference
            d, the better one is ranked higher with probability sigmoid(d / T).
        rng: the only source of randomness, so runs are reproducible by seed.

    Returns:
        ``ranking`` as a list of Python ints: ``ranking[i]`` is the index of the
        i-th best response (the format of :class:`~reward_models.data.RankedRecord`).

    With ``temperature == 0`` the ranking is a sort by gold score, descending.
    Equal gold scores are then tied, and ties are broken uniformly at random using
    ``rng`` (not by index: breaking by index would systematically favour whichever
    response happens to be listed first, e.g. the first policy sample, and a
    reward model could learn that position bias).
    """
    gold = np.asarray(gold_scores, dtype=np.float64)  # (K,)
    if gold.ndim != 1:
        raise ValueError(f"gold_scores must be 1-D (K,), got shape {gold.shape}")
    if not np.all(np.isfinite(gold)):
        raise ValueError(f"gold_scores must be finite, got {gold.tolist()}")
    if not (math.isfinite(temperature) and temperature >= 0):
        raise ValueError(f"temperature must be a finite number >= 0, got {temperature}")
    k = gold.shape[0]

    if temperature == 0:
        # Shuffle first, then a *stable* sort: equal scores keep their shuffled
        # (random) relative order, everything else is sorted by gold.
        shuffled = rng.permutation(k)  # (K,)
        order = np.argsort(-gold[shuffled], kind="stable")  # (K,)
        return [int(i) for i in shuffled[order]]

    # Gumbel trick. gold/T + G and gold + T*G sort identically (we multiplied by
    # T > 0), and the second form cannot overflow when T is tiny.
    noise = rng.gumbel(size=k)  # (K,)
    utilities = gold + temperature * noise  # (K,)
    return [int(i) for i in np.argsort(-utilities)]


def label_rankings(
    prompts: Sequence[str],
    responses: Sequence[Sequence[str]],
    gold_fn: GoldFn,
    temperature: float,
    rng: np.random.Generator,
) -> list[RankedRecord]:
    """Have the simulated labeler rank each prompt's responses.

    Args:
        prompts: N prompts.
        responses: N lists, ``responses[n]`` holding the K_n (2..9) responses
            to ``prompts[n]``; K may differ between prompts.
        gold_fn: ``gold_fn(prompt, response) -> float in [0, 1]``, the hidden
            true quality.
        temperature: labeler noise, see :func:`bradley_terry_ranking`.
        rng: source of randomness; the same seed gives the same rankings.

    Returns:
        One :class:`RankedRecord` per prompt, in the order of ``prompts``.
    """
    if len(prompts) != len(responses):
        raise ValueError(
            f"need one list of responses per prompt, got {len(prompts)} prompts "
            f"and {len(responses)} response lists"
        )
    records = []
    for n, (prompt, candidates) in enumerate(zip(prompts, responses)):
        if isinstance(candidates, str):  # a str is a sequence of characters, not responses
            raise TypeError(f"responses[{n}] must be a list of str, got a single str")
        gold = np.array([float(gold_fn(prompt, r)) for r in candidates])  # (K,)
        # A gold function outside [0, 1] is a bug in the task, and it would
        # silently change the labeler's effective noise level (d / T), so fail.
        if not np.all((gold >= 0.0) & (gold <= 1.0)):
            raise ValueError(
                f"gold_fn must return values in [0, 1]; prompt {n} got {gold.tolist()}"
            )
        ranking = bradley_terry_ranking(gold, temperature, rng)
        records.append(RankedRecord(prompt=prompt, responses=tuple(candidates), ranking=ranking))
    return records


__all__ = ["bradley_terry_ranking", "label_rankings"]
