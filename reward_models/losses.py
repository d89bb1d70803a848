"""Losses for training a reward model from comparisons.

The reward model r(prompt, response) -> scalar is trained so that, under the
Bradley-Terry model, P(a preferred over b) = sigmoid(r(a) - r(b)). Maximising the
likelihood of the labelers' choices gives the loss ``-log sigmoid(r_w - r_l)``
for each (winner w, loser l) pair. Only score *differences* matter, so the
reward model's scale and offset are free (the RL step usually normalises them).

Two entry points:

* :func:`pairwise_loss` for a batch of independent (chosen, rejected) pairs.
* :func:`kwise_loss` for InstructGPT-style rankings of K responses per prompt.
  Each response is scored ONCE, then all C(K, 2) pairs are formed from those
  scores. That is far cheaper than C(K, 2) separate pairwise forward passes, and
  (as the InstructGPT paper notes) keeping all of a prompt's pairs in one batch
  element avoids overfitting from seeing the same response in many separate
  gradient steps.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor


def pairwise_loss(r_chosen: Tensor, r_rejected: Tensor, margin: float | Tensor = 0.0) -> Tensor:
    """Mean over the batch of ``-logsigmoid(r_chosen - r_rejected - margin)``.

    Args:
        r_chosen: (B,) scores of the preferred responses.
        r_rejected: (B,) scores of the other responses.
        margin: asks for the chosen score to exceed the rejected one by at least
            about ``margin`` (Llama-2 uses a margin that grows with how strongly
            the labeler preferred the response). A float, or a (B,) tensor for a
            per-pair margin. 0 gives the plain Bradley-Terry loss.

    ``logsigmoid`` is used rather than ``log(sigmoid(x))`` because the latter
    underflows to ``log(0) = -inf`` for very negative x.
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(
            f"r_chosen and r_rejected must have the same shape, "
            f"got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}"
        )
    if r_chosen.numel() == 0:
        raise ValueError("pairwise_loss needs at least one pair (the mean of nothing is NaN)")
    diff = r_chosen - r_rejected - margin  # (B,)
    return -F.logsigmoid(diff).mean()


def kwise_loss(scores: Tensor, ranking: Tensor, valid: Tensor | None = None) -> Tensor:
    """InstructGPT ranking loss: per-prompt mean over all C(K, 2) pairs, then mean over prompts.

    Args:
        scores: (B, K) reward of each response, from one forward pass per response.
        ranking: (B, K) integer; ``ranking[b, i]`` is the index (into ``scores[b]``)
            of prompt b's i-th best response, so ``ranking[b, 0]`` is the best.
            Each row must be a permutation of ``range(K)``.
        valid: optional (B, K) bool, indexed like ``scores``: ``valid[b, k]`` says
            whether response slot k of prompt b is real. Use it to batch prompts
            with different numbers of responses by padding to a common K. Pairs
            that involve a padded slot are ignored, and each prompt's loss is
            averaged over its own number of pairs, C(K_b, 2).

            Padding convention: put prompt b's K_b real responses in slots
            ``0..K_b-1``, any score in the padded slots, and fill
            ``ranking[b, :K_b]`` with the real ranking and ``ranking[b, K_b:]`` with
            ``K_b, ..., K-1`` so the row is still a permutation. (In fact padded
            slots may sit anywhere in the ranking: only the relative order of the
            valid responses is used.)

    Returns:
        Scalar tensor: mean over prompts of (mean over that prompt's pairs of
        ``-logsigmoid(r_better - r_worse)``).

    Every prompt gets equal weight, whatever its K_b: a prompt with 9 responses
    (36 pairs) does not count 6 times as much as one with 4 (6 pairs).
    """
    if scores.dim() != 2:
        raise ValueError(f"scores must be (B, K), got shape {tuple(scores.shape)}")
    if ranking.shape != scores.shape:
        raise ValueError(
            f"ranking must have the shape of scores {tuple(scores.shape)}, "
            f"got {tuple(ranking.shape)}"
        )
    if ranking.dtype.is_floating_point or ranking.dtype == torch.bool:
        raise TypeError(f"ranking must be an integer tensor, got {ranking.dtype}")
    batch, k = scores.shape
    if batch == 0:
        raise ValueError("kwise_loss needs at least one prompt (the mean of nothing is NaN)")
    ranking = ranking.long()  # gather wants int64

    # A row that is not a permutation would silently drop or double-count responses.
    positions = torch.arange(k, device=ranking.device)  # (K,)
    if not torch.equal(ranking.sort(dim=1).values, positions.expand(batch, k)):
        raise ValueError("each row of ranking must be a permutation of range(K)")

    if valid is None:
        valid = torch.ones(batch, k, dtype=torch.bool, device=scores.device)  # (B, K)
    elif valid.shape != scores.shape or valid.dtype != torch.bool:
        raise ValueError(
            f"valid must be a bool tensor of shape {tuple(scores.shape)}, "
            f"got {valid.dtype} of shape {tuple(valid.shape)}"
        )

    # Reorder so that column i holds the i-th best response.
    ranked_scores = scores.gather(1, ranking)  # (B, K), best first
    ranked_valid = valid.gather(1, ranking)  # (B, K)
    # Padded slots may hold any value, even inf or NaN. Replace them *before* any
    # arithmetic: masking afterwards is not enough, because NaN * 0 = NaN, and the
    # backward pass would carry the NaN into the real scores' gradients.
    ranked_scores = torch.where(ranked_valid, ranked_scores, torch.zeros_like(ranked_scores))

    # diff[b, i, j] = score of i-th best - score of j-th best.
    diff = ranked_scores.unsqueeze(2) - ranked_scores.unsqueeze(1)  # (B, K, K)

    # A pair (i, j) counts when i is ranked above j (i < j: strict upper
    # triangle) and both responses are real.
    better_first = torch.ones(k, k, dtype=torch.bool, device=scores.device).triu(1)  # (K, K)
    both_valid = ranked_valid.unsqueeze(2) & ranked_valid.unsqueeze(1)  # (B, K, K)
    pair_mask = better_first & both_valid  # (B, K, K)

    n_pairs = pair_mask.sum(dim=(1, 2))  # (B,)
    if bool((n_pairs == 0).any()):
        raise ValueError("every prompt needs at least 2 valid responses to form a pair")

    pair_losses = -F.logsigmoid(diff) * pair_mask  # (B, K, K), 0 where no pair
    per_prompt = pair_losses.sum(dim=(1, 2)) / n_pairs  # (B,)
    return per_prompt.mean()


@torch.no_grad()
def pairwise_accuracy(r_chosen: Tensor, r_rejected: Tensor) -> float:
    """Fraction of pairs where the chosen response scores strictly higher.

    Ties count as wrong: a reward model that gives everything the same score
    should get accuracy 0, not 1, so that it cannot look good by collapsing.
    Chance level for a random scorer is 0.5.
    """
    if r_chosen.shape != r_rejected.shape:
        raise ValueError(
            f"r_chosen and r_rejected must have the same shape, "
            f"got {tuple(r_chosen.shape)} and {tuple(r_rejected.shape)}"
        )
    if r_chosen.numel() == 0:
        raise ValueError("pairwise_accuracy needs at least one pair")
    return (r_chosen > r_rejected).float().mean().item()


__all__ = ["kwise_loss", "pairwise_accuracy", "pairwise_loss"]
