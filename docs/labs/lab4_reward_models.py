# ---
# jupyter:
#   jupytext:
#     text_representation:
#       extension: .py
#       format_name: percent
# ---

# %% [markdown]
# # Lab 4 — Reward models from rankings
#
# **Learning goals.**
#
# 1. the Bradley–Terry model of a labeler's choice, and its loss;
# 2. InstructGPT's K-wise ranking loss: all $\binom{K}{2}$ pairs of a ranking from one score
#    per response;
# 3. why rankings of K responses beat independent pairs **at equal labelling effort** —
#    measured, with a simulated labeler and the gold score.
#
# **Time:** about 45 minutes of work (the solution's run time: docs/labs/README.md).
#
# ## Bradley–Terry
#
# A labeler compares responses $a$ and $b$ to prompt $x$. Bradley–Terry says the chance they
# prefer $a$ depends only on a difference of scores:
#
# $$ P(a \succ b \mid x) = \sigma\big(r(x, a) - r(x, b)\big), \qquad
#    \sigma(z) = \frac{1}{1 + e^{-z}}. $$
#
# Maximising the likelihood of the observed choices (chosen $y_w$, rejected $y_l$) gives the
# reward-model loss
#
# $$ \mathcal{L}_{\mathrm{pair}} = -\,\mathbb{E}\big[\log \sigma\big(r(x, y_w) - r(x, y_l)\big)\big]. $$
#
# Only score differences matter: adding a constant to $r$ changes nothing (which is why the
# shipped reward model is normalised afterwards, so that SFT samples score mean 0, std 1).
#
# **K-wise rankings** (InstructGPT). A labeler ranks $K$ responses to one prompt; the ranking
# holds $\binom{K}{2}$ comparisons. Each response is scored **once** and the loss averages
# over all pairs $(i \succ j)$ of the prompt:
#
# $$ \mathcal{L}_K = -\,\mathbb{E}_x\Big[\tbinom{K}{2}^{-1} \sum_{i \succ j}
#    \log\sigma\big(r(x, y_i) - r(x, y_j)\big)\Big]. $$
#
# Reading a response costs a labeler the same whether it is ranked among 4 or compared with
# one other. $N$ rankings of $K$ label $NK$ responses and give $N\binom{K}{2}$ comparisons;
# the same $NK$ responses as independent pairs give only $NK/2$.

# %% tags=["setup"]
import math

import matplotlib.pyplot as plt
import numpy as np
import torch
import torch.nn.functional as F

import textenv

torch.set_num_threads(2)


def attempt(fn, *args, **kwargs):
    """Call an exercise function; a TODO that is still open fails the check politely."""
    try:
        return fn(*args, **kwargs)
    except NotImplementedError:
        raise AssertionError(f"{fn.__name__} is not implemented yet: replace the TODO "
                             "in its cell, run that cell, then this one again.") from None


# %% [markdown]
# ## Exercise 1 — the pairwise Bradley–Terry loss
#
# `r_chosen` and `r_rejected` are `(B,)` tensors. Return the scalar
# $-\frac1B \sum_b \log\sigma(r_{w,b} - r_{l,b})$. It must stay finite when a difference is
# very negative (−200, say): `torch.log(torch.sigmoid(z))` underflows to `-inf` there; look
# for a function that computes $\log\sigma$ directly.

# %% tags=["exercise"]
def pairwise_bt_loss(r_chosen, r_rejected):
    # BEGIN SOLUTION
    return -F.logsigmoid(r_chosen - r_rejected).mean()
    # END SOLUTION


# %% tags=["check"]
def check_pairwise_bt_loss():
    from reward_models.losses import pairwise_loss

    g = torch.Generator().manual_seed(0)
    a, b = torch.randn(16, generator=g), torch.randn(16, generator=g)
    got = attempt(pairwise_bt_loss, a, b)
    assert torch.is_tensor(got) and got.dim() == 0, "return a scalar tensor (the mean)"
    assert abs(float(pairwise_bt_loss(a, a)) - math.log(2)) < 1e-5, (
        "equal scores mean P = 1/2, so the loss should be log 2")
    assert torch.allclose(got, pairwise_loss(a, b), atol=1e-6), (
        "the loss is -mean(log sigmoid(r_chosen - r_rejected)): mind the sign and the order")
    extreme = pairwise_bt_loss(torch.tensor([-200.0]), torch.tensor([0.0]))
    assert torch.isfinite(extreme), "use F.logsigmoid: log(sigmoid(-200)) underflows to -inf"
    print("✓ pairwise_bt_loss is correct")


check_pairwise_bt_loss()

# %% [markdown]
# ## Exercise 2 — a ranking as pairs
#
# A ranking is a list of response indices, best first: `[2, 0, 1]` means response 2 beat
# response 0, which beat response 1. Return every `(better, worse)` pair it implies, in the
# order of the ranking: `[(2, 0), (2, 1), (0, 1)]`.

# %% tags=["exercise"]
def ranking_to_pairs(ranking):
    # BEGIN SOLUTION
    return [(ranking[i], ranking[j]) for i in range(len(ranking))
            for j in range(i + 1, len(ranking))]
    # END SOLUTION


# %% tags=["check"]
def check_ranking_to_pairs():
    got = attempt(ranking_to_pairs, [2, 0, 1])
    assert list(map(tuple, got)) == [(2, 0), (2, 1), (0, 1)], (
        f"for [2, 0, 1] expected [(2, 0), (2, 1), (0, 1)], got {got}")
    pairs = ranking_to_pairs([3, 1, 4, 0, 2])
    assert len(pairs) == math.comb(5, 2), f"K = 5 gives C(5, 2) = 10 pairs, got {len(pairs)}"
    assert all(a != b for a, b in pairs), "a response is never compared with itself"
    print("✓ ranking_to_pairs is correct")


check_ranking_to_pairs()

# %% [markdown]
# ## Exercise 3 — the K-wise loss
#
# `scores` is `(B, K)`: one score per response. `ranking` is `(B, K)` integers:
# `ranking[b, i]` is the index of prompt $b$'s $i$-th best response. Return $\mathcal{L}_K$:
# for each prompt the mean over its $\binom{K}{2}$ pairs of $-\log\sigma(r_{\mathrm{better}}
# - r_{\mathrm{worse}})$, then the mean over prompts. A loop over prompts and
# `ranking_to_pairs` is fine; a vectorised version (`scores.gather(1, ranking)`, then all
# differences at once) is a bonus.

# %% tags=["exercise"]
def kwise_bt_loss(scores, ranking):
    # BEGIN SOLUTION
    ranked = scores.gather(1, ranking)  # (B, K), best first
    diff = ranked[:, :, None] - ranked[:, None, :]  # (B, K, K): better row, worse column
    k = scores.shape[1]
    upper = torch.ones(k, k, dtype=torch.bool).triu(1)  # pairs i ranked above j
    per_prompt = -(F.logsigmoid(diff) * upper).sum((1, 2)) / upper.sum()  # (B,)
    return per_prompt.mean()
    # END SOLUTION


# %% tags=["check"]
def check_kwise_bt_loss():
    from reward_models.losses import kwise_loss

    g = torch.Generator().manual_seed(1)
    scores = torch.randn(5, 4, generator=g, requires_grad=True)
    ranking = torch.stack([torch.randperm(4, generator=g) for _ in range(5)])
    got = attempt(kwise_bt_loss, scores, ranking)
    assert torch.is_tensor(got) and got.dim() == 0, "return a scalar tensor"
    want = kwise_loss(scores, ranking)
    flat = torch.stack([torch.stack([-F.logsigmoid(scores[b, i] - scores[b, j])
                                     for i, j in ranking_to_pairs(ranking[b].tolist())])
                        for b in range(5)])  # (B, 6)
    assert torch.allclose(got, want, atol=1e-5), (
        "expected the mean over prompts of each prompt's mean pair loss"
        + (" (the sum over pairs is C(K,2) = 6 times too large)"
           if torch.allclose(got, flat.sum(1).mean(), atol=1e-5) else "")
        + (": the ranking is best first; ranking[b, 0] indexes the best response"
           if torch.allclose(got, kwise_loss(scores, ranking.flip(1)), atol=1e-5) else ""))
    got.backward()
    assert scores.grad is not None, "keep the gradient (no .item() or numpy inside)"
    print("✓ kwise_bt_loss is correct")


check_kwise_bt_loss()

# %% [markdown]
# ## The experiment: K-wise vs pairwise at equal labelling effort
#
# A simulated labeler ranks SFT samples by their hidden gold score, with Bradley–Terry noise
# (`reward_models.labeler`). We collect two pools of labels from fresh prompts:
# rankings of $K = 4$ and independent pairs. To train hundreds of reward models in seconds,
# each one is a **linear head on frozen features**: the SFT transformer's hidden state at
# the last token (`RewardModel.features`), exactly what the shipped reward model's head
# reads; only the head is learned, with your losses. Sampling the responses takes most of
# the time.

# %%
from reward_models.pipeline import RewardPipelineConfig, make_rankings
from textenv.rewards import RewardModel
from textenv.tasks import make_task

K, TEMPERATURE = 4, RewardPipelineConfig.labeler_temperature
task, tokenizer, sft = make_task("reviews"), textenv.load_tokenizer(), textenv.load_reference()
kwise_pool = make_rankings(sft, tokenizer, task, 300, K, split="train",
                           labeler_temperature=TEMPERATURE, seed=1)
pair_pool = make_rankings(sft, tokenizer, task, 600, 2, split="train",
                          labeler_temperature=TEMPERATURE, seed=2)
test = make_rankings(sft, tokenizer, task, 200, K, split="eval", labeler_temperature=0.0,
                     seed=3)
print(f"labeller noise T = {TEMPERATURE}; e.g. {kwise_pool[0].prompt!r}")
for i in kwise_pool[0].ranking:
    print(f"   {kwise_pool[0].responses[i]}")

frozen = RewardModel.from_lm(sft, tokenizer)  # SFT trunk; we only use its features


def features(records):
    """(N, K, C) features of every response of every record."""
    prompts = [r.prompt for r in records for _ in r.responses]
    responses = [y for r in records for y in r.responses]
    return frozen.features(prompts, responses).reshape(len(records), len(records[0].responses),
                                                       -1)


feats = {"kwise": features(kwise_pool), "pairwise": features(pair_pool),
         "test": features(test)}
rankings = {name: torch.tensor([r.ranking for r in pool])
            for name, pool in (("kwise", kwise_pool), ("pairwise", pair_pool))}
test_gold = torch.tensor([[task.gold_score(r.prompt, y) for y in r.responses] for r in test])
print({k: tuple(v.shape) for k, v in feats.items()})


# %% [markdown]
# Each reward model is a linear head $r = w^\top h$ trained full-batch with Adam and a small
# weight decay. It is scored by its **gold accuracy**: on held-out prompts, the fraction of
# response pairs (gold scores at least 0.1 apart) that it orders as gold does.

# %%
def train_head(x, ranking, loss_fn, steps=150, lr=0.03, weight_decay=1e-2, seed=0):
    """x (N, K, C) features, ranking (N, K) -> a head (C,) trained with loss_fn."""
    torch.manual_seed(seed)
    mean, std = feats["kwise"].mean((0, 1)), feats["kwise"].std((0, 1)) + 1e-6
    x = (x - mean) / std  # (N, K, C) standardised features
    w = torch.zeros(x.shape[-1], requires_grad=True)
    opt = torch.optim.Adam([w], lr=lr, weight_decay=weight_decay)
    for _ in range(steps):
        scores = x @ w  # (N, K)
        loss = loss_fn(scores, ranking)
        opt.zero_grad()
        loss.backward()
        opt.step()
    return lambda f: ((f - mean) / std) @ w.detach()


def gold_accuracy(head, min_gap=0.1):
    scores = head(feats["test"])  # (N, K)
    ds = scores[:, :, None] - scores[:, None, :]  # (N, K, K)
    dg = test_gold[:, :, None] - test_gold[:, None, :]
    pairs = dg > min_gap  # i really better than j
    return float((ds[pairs] > 0).float().mean())


def pair_loss(scores, ranking):  # (N, 2) scores, ranking best first
    ranked = scores.gather(1, ranking)
    return pairwise_bt_loss(ranked[:, 0], ranked[:, 1])


budgets = [40, 80, 160, 320, 640, 1200]  # labelled responses
results = {"K-wise (K = 4)": [], "pairwise": []}
rng = np.random.default_rng(0)
for budget in budgets:
    acc = {name: [] for name in results}
    for seed in range(5):
        rows = torch.as_tensor(rng.permutation(300)[: budget // K])
        acc["K-wise (K = 4)"].append(gold_accuracy(train_head(
            feats["kwise"][rows], rankings["kwise"][rows], kwise_bt_loss, seed=seed)))
        rows = torch.as_tensor(rng.permutation(600)[: budget // 2])
        acc["pairwise"].append(gold_accuracy(train_head(
            feats["pairwise"][rows], rankings["pairwise"][rows], pair_loss, seed=seed)))
    for name in results:
        results[name].append((np.mean(acc[name]), np.std(acc[name]) / np.sqrt(len(acc[name]))))
    print(f"{budget:5d} labelled responses:  " + "   ".join(
        f"{n} {results[n][-1][0]:.3f} ± {results[n][-1][1]:.3f}" for n in results))

# %%
fig, ax = plt.subplots(figsize=(6, 4))
for name, points in results.items():
    mean, se = np.array(points).T
    ax.errorbar(budgets, mean, yerr=se, marker="o", capsize=3, label=name)
ax.set(xscale="log", xlabel="labelled responses (labelling effort)",
       ylabel="held-out gold accuracy",
       title="Reward models at equal labelling effort\n(linear head on frozen SFT features)")
ax.legend()
fig.tight_layout()
fig.savefig("lab4_kwise_vs_pairwise.png", dpi=80)

# %% [markdown]
# **Expected plot** (from the solution run; mean ± standard error over 5 draws of data):
#
# ![expected: K-wise above pairwise at small budgets](images/lab4_kwise_vs_pairwise.png)
#
# The full-size version of this experiment trains whole transformers:
# `textenv compare-rm-losses` (docs/reward_models.md).
#
# ## Questions
#
# 1. With the same labelled responses, how many comparisons does each pool hold? Where on
#    the plot does that advantage matter most, and why does the gap close?
# 2. The pairs inside one ranking are not independent (they share responses). Why does
#    InstructGPT put all pairs of a ranking in one batch element instead of shuffling them?
# 3. Rerun with `TEMPERATURE = 0.3` (noisier labels). What changes?

# %% tags=["solution"]
# Answers (teacher's version):
# 1. N rankings of 4 give 6N comparisons from 4N responses (1.5 per response); pairs give
#    0.5 per response, 3x fewer. The gap is largest when labels are scarce; with enough
#    data both approach the ceiling of what a linear head on these features can do.
# 2. Each response appears in K-1 pairs; as separate batch elements they would be seen
#    K-1 times per epoch and the model overfits them; one element per ranking also means
#    one forward per response (cheaper) and every prompt weighs the same.
# 3. Both accuracies should drop: a noisy comparison carries less information, so more
#    comparisons are needed to average the noise out; look at whether the K-wise
#    advantage then lasts to larger budgets.
