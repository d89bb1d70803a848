"""Tests for the reward-model losses (reward_models.losses)."""

from __future__ import annotations

import math
from itertools import combinations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from reward_models.losses import kwise_loss, pairwise_accuracy, pairwise_loss


def _neg_log_sigmoid(x: float) -> float:
    """-log(sigmoid(x)) = log(1 + exp(-x)), by hand."""
    return math.log1p(math.exp(-x))


# ----------------------------------------------------------------- pairwise


def test_pairwise_loss_hand_computed():
    r_chosen = torch.tensor([1.0, 0.0, 3.0])
    r_rejected = torch.tensor([0.0, 2.0, 3.0])
    # differences 1, -2, 0
    expected = (_neg_log_sigmoid(1.0) + _neg_log_sigmoid(-2.0) + math.log(2.0)) / 3
    assert pairwise_loss(r_chosen, r_rejected).item() == pytest.approx(expected, rel=1e-6)
    assert expected == pytest.approx((0.3132617 + 2.1269280 + 0.6931472) / 3, rel=1e-6)


def test_pairwise_loss_margin():
    r_chosen = torch.tensor([1.0, 0.0])
    r_rejected = torch.tensor([0.0, 2.0])
    expected = (_neg_log_sigmoid(0.5) + _neg_log_sigmoid(-2.5)) / 2
    assert pairwise_loss(r_chosen, r_rejected, margin=0.5).item() == pytest.approx(
        expected, rel=1e-6
    )
    per_pair = torch.tensor([0.5, 1.0])
    expected = (_neg_log_sigmoid(0.5) + _neg_log_sigmoid(-3.0)) / 2
    assert pairwise_loss(r_chosen, r_rejected, margin=per_pair).item() == pytest.approx(
        expected, rel=1e-6
    )


def test_pairwise_loss_is_numerically_stable():
    loss = pairwise_loss(torch.tensor([-1000.0]), torch.tensor([1000.0]))
    assert loss.item() == pytest.approx(2000.0)  # log(sigmoid(x)) would give inf
    assert pairwise_loss(torch.tensor([1000.0]), torch.tensor([-1000.0])).item() == 0.0


def test_pairwise_loss_rejects_bad_shapes():
    with pytest.raises(ValueError, match="same shape"):
        pairwise_loss(torch.zeros(3), torch.zeros(4))
    with pytest.raises(ValueError, match="at least one pair"):
        pairwise_loss(torch.zeros(0), torch.zeros(0))


def test_pairwise_accuracy():
    r_chosen = torch.tensor([1.0, 2.0, 3.0, 0.0])
    r_rejected = torch.tensor([0.0, 3.0, 3.0, -1.0])
    acc = pairwise_accuracy(r_chosen, r_rejected)
    assert isinstance(acc, float)
    assert acc == 0.5  # the tie (3 vs 3) counts as wrong


# ------------------------------------------------------------------- k-wise


def _kwise_by_loops(scores, ranking, valid=None):
    """Reference: every pair of every prompt, one at a time, with pairwise_loss."""
    batch = scores.shape[0]
    per_prompt = []
    for b in range(batch):
        order = [int(i) for i in ranking[b]]
        if valid is not None:
            order = [i for i in order if valid[b, i]]
        pair_losses = [
            pairwise_loss(scores[b, better].reshape(1), scores[b, worse].reshape(1))
            for better, worse in combinations(order, 2)  # combinations keep rank order
        ]
        per_prompt.append(torch.stack(pair_losses).mean())
    return torch.stack(per_prompt).mean()


def _random_rankings(batch, k, generator):
    return torch.stack([torch.randperm(k, generator=generator) for _ in range(batch)])  # (B, K)


def test_kwise_equals_mean_of_pairwise_losses_k4():
    g = torch.Generator().manual_seed(0)
    scores = torch.randn(6, 4, generator=g, requires_grad=True)  # (B, K)
    ranking = _random_rankings(6, 4, g)  # (B, K)

    loss = kwise_loss(scores, ranking)
    (grad,) = torch.autograd.grad(loss, scores)
    ref = _kwise_by_loops(scores, ranking)
    (ref_grad,) = torch.autograd.grad(ref, scores)

    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.allclose(grad, ref_grad, atol=1e-6)


def test_kwise_with_valid_mask_ignores_padding():
    g = torch.Generator().manual_seed(1)
    k = 5
    n_real = [2, 5, 3, 4]  # responses per prompt, padded to K = 5
    batch = len(n_real)
    scores = torch.randn(batch, k, generator=g)  # (B, K)
    valid = torch.zeros(batch, k, dtype=torch.bool)  # (B, K)
    ranking = torch.empty(batch, k, dtype=torch.long)  # (B, K)
    for b, n in enumerate(n_real):
        valid[b, :n] = True
        ranking[b, :n] = torch.randperm(n, generator=g)
        ranking[b, n:] = torch.arange(n, k)
        scores[b, n:] = float("nan")  # padding may hold garbage
    scores.requires_grad_(True)

    loss = kwise_loss(scores, ranking, valid)
    (grad,) = torch.autograd.grad(loss, scores)
    ref = _kwise_by_loops(scores, ranking, valid)
    (ref_grad,) = torch.autograd.grad(ref, scores)

    assert torch.isfinite(loss)
    assert loss.item() == pytest.approx(ref.item(), rel=1e-6)
    assert torch.all(torch.isfinite(grad))
    assert torch.all(grad[~valid] == 0)
    assert torch.allclose(grad[valid], ref_grad[valid], atol=1e-6)


def test_kwise_padding_may_sit_anywhere_in_the_ranking():
    scores = torch.tensor([[2.0, 99.0, 0.5]])  # slot 1 is padding
    valid = torch.tensor([[True, False, True]])
    ranking = torch.tensor([[1, 0, 2]])  # padded slot listed first: must not matter
    expected = _neg_log_sigmoid(1.5)
    assert kwise_loss(scores, ranking, valid).item() == pytest.approx(expected, rel=1e-6)


@settings(max_examples=20, deadline=None)
@given(batch=st.integers(1, 4), k=st.integers(2, 9), seed=st.integers(0, 2**31 - 1))
def test_kwise_matches_loops_property(batch, k, seed):
    g = torch.Generator().manual_seed(seed)
    scores = torch.randn(batch, k, generator=g, dtype=torch.float64) * 3
    ranking = _random_rankings(batch, k, g)
    valid = torch.rand(batch, k, generator=g) < 0.7
    valid[:, :2] = True  # at least two real responses per prompt
    for mask in (None, valid):
        expected = _kwise_by_loops(scores, ranking, mask)
        assert kwise_loss(scores, ranking, mask).item() == pytest.approx(expected.item(), rel=1e-9)


def test_kwise_with_k2_is_pairwise_loss():
    scores = torch.tensor([[0.3, 1.2], [2.0, -1.0]])
    ranking = torch.tensor([[1, 0], [0, 1]])
    expected = pairwise_loss(torch.tensor([1.2, 2.0]), torch.tensor([0.3, -1.0]))
    assert kwise_loss(scores, ranking).item() == pytest.approx(expected.item(), rel=1e-6)


def test_kwise_prompts_weigh_equally():
    # Prompt 0 has 9 responses (36 pairs), prompt 1 has 2 (1 pair); each gets weight 1/2.
    scores = torch.zeros(2, 9)
    scores[1, 0] = -2.0
    ranking = torch.arange(9).repeat(2, 1)  # prompt 1: slot 0 is best, slot 1 worse
    valid = torch.ones(2, 9, dtype=torch.bool)
    valid[1, 2:] = False
    expected = (math.log(2.0) + _neg_log_sigmoid(-2.0)) / 2
    assert kwise_loss(scores, ranking, valid).item() == pytest.approx(expected, rel=1e-6)


def test_kwise_rejects_bad_input():
    scores = torch.zeros(2, 3)
    with pytest.raises(ValueError, match="permutation"):
        kwise_loss(scores, torch.tensor([[0, 1, 2], [0, 0, 1]]))
    with pytest.raises(ValueError, match="permutation"):
        kwise_loss(scores, torch.tensor([[0, 1, 2], [1, 2, 3]]))
    with pytest.raises(ValueError, match="shape"):
        kwise_loss(scores, torch.tensor([[0, 1], [1, 0]]))
    with pytest.raises(TypeError, match="integer"):
        kwise_loss(scores, torch.zeros(2, 3))
    with pytest.raises(ValueError, match="at least 2 valid"):
        kwise_loss(
            scores,
            torch.tensor([[0, 1, 2], [0, 1, 2]]),
            torch.tensor([[1, 1, 0], [1, 0, 0]]).bool(),
        )
    with pytest.raises(ValueError, match="bool"):
        kwise_loss(scores, torch.tensor([[0, 1, 2], [0, 1, 2]]), torch.ones(2, 3))


# ----------------------------------------------------------------- training


def _synthetic_preferences(n_prompts=64, k=4, dim=8, seed=0):
    """Responses are feature vectors; a hidden linear 'gold' scorer ranks them."""
    g = torch.Generator().manual_seed(seed)
    features = torch.randn(n_prompts, k, dim, generator=g)  # (B, K, D)
    true_w = torch.randn(dim, generator=g)  # (D,)
    gold = features @ true_w  # (B, K)
    ranking = gold.argsort(dim=1, descending=True)  # (B, K), best first
    return features, ranking


@pytest.mark.parametrize("loss_kind", ["kwise", "pairwise"])
def test_loss_falls_when_training_a_linear_scorer(loss_kind):
    torch.manual_seed(0)
    features, ranking = _synthetic_preferences()
    batch, k, dim = features.shape
    scorer = torch.nn.Linear(dim, 1)
    optimizer = torch.optim.Adam(scorer.parameters(), lr=0.05)

    # For the pairwise loss, unroll each ranking into its C(K, 2) (better, worse) pairs.
    ranked_features = features[torch.arange(batch)[:, None], ranking]  # (B, K, D) best first
    better_idx, worse_idx = zip(*combinations(range(k), 2))
    chosen = ranked_features[:, list(better_idx)].reshape(-1, dim)  # (B * C(K,2), D)
    rejected = ranked_features[:, list(worse_idx)].reshape(-1, dim)  # (B * C(K,2), D)

    def compute_loss():
        if loss_kind == "kwise":
            scores = scorer(features).squeeze(-1)  # (B, K): one forward per response
            return kwise_loss(scores, ranking)
        return pairwise_loss(scorer(chosen).squeeze(-1), scorer(rejected).squeeze(-1))

    losses = []
    for _ in range(40):
        optimizer.zero_grad()
        loss = compute_loss()
        loss.backward()
        optimizer.step()
        losses.append(loss.item())

    assert losses[-1] < 0.5 * losses[0], losses
    with torch.no_grad():
        acc = pairwise_accuracy(scorer(chosen).squeeze(-1), scorer(rejected).squeeze(-1))
    assert acc > 0.9
