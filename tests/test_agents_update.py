"""The update's forward and its options: padding trim, length-bucketed minibatches, bf16
autocast and torch.compile (agents/rollout.py, agents/ppo.py, agents/training.py)."""

import math
from dataclasses import replace

import pytest
import torch
from torch import nn

from agents import training
from agents.ppo import PPO, ActorCritic, PPOConfig, minibatches, ppo_update
from agents.rollout import Rollout, forward_responses, trimmed_columns
from agents.training import adam, update_model
from tests.conftest import left_padded, tiny_gpt
from textenv.assets import ASSETS_DIR

PROMPT_LENGTHS = [1, 12, 3, 7, 2, 10, 5, 1]
RESPONSE_LENGTHS = [1, 15, 4, 2, 9, 1, 6, 3]
N, TP, TR = len(PROMPT_LENGTHS), max(PROMPT_LENGTHS), max(RESPONSE_LENGTHS)


def _rollout() -> Rollout:
    """Rows of very different prompt and response lengths, left- and right-padded."""
    prompt_ids, prompt_mask = left_padded(PROMPT_LENGTHS, TP)  # (N, TP)
    g = torch.Generator().manual_seed(2)
    response_mask = torch.arange(TR)[None, :] < torch.tensor(RESPONSE_LENGTHS)[:, None]
    response_ids = torch.randint(1, 17, (N, TR), generator=g).masked_fill(~response_mask, 0)
    return Rollout(prompt_ids, prompt_mask, response_ids, response_mask,
                   sample_logprobs=torch.zeros(N, TR), scores=torch.zeros(N),
                   gold=torch.zeros(N), eos=torch.ones(N, dtype=torch.bool),
                   prompts=[""] * N, responses=[""] * N, seconds=0.0)


def _actor_critic() -> ActorCritic:
    agent = ActorCritic(tiny_gpt(), separate_critic=True)
    nn.init.normal_(agent.value_head.weight)  # not zero, so the values say something
    return agent


def test_trimmed_columns_keep_what_some_row_needs():
    ro = _rollout()
    assert trimmed_columns(ro.prompt_mask, ro.response_mask) == (0, TR)
    short = torch.tensor([0, 2, 4, 7])  # prompts of 1-3 tokens, responses of 1-9
    assert trimmed_columns(ro.prompt_mask[short], ro.response_mask[short]) == (TP - 3, 9)
    # The last prompt column (it predicts the first response token) and one response
    # column always stay.
    empty = torch.zeros(2, 4, dtype=torch.bool)
    assert trimmed_columns(empty, empty) == (3, 1)


@pytest.mark.parametrize("kind", ["gpt", "actor_critic"])
@pytest.mark.parametrize("rows", [None, [0, 2, 4, 7], [1, 3], [5]])
def test_trimmed_forward_equals_the_untrimmed_one_on_real_positions(kind, rows):
    ro = _rollout()
    model = tiny_gpt() if kind == "gpt" else _actor_critic()
    idx = None if rows is None else torch.tensor(rows)
    mask = ro.response_mask if idx is None else ro.response_mask[idx]  # (b, TR)
    trimmed = forward_responses(model, ro, idx)
    full = forward_responses(model, ro, idx, trim=False)
    trimmed, full = ((t,) if kind == "gpt" else t for t in (trimmed, full))
    for a, b in zip(trimmed, full):
        assert a.shape == b.shape and a.shape[:2] == (len(mask), TR)
        torch.testing.assert_close(a[mask], b[mask], atol=1e-5, rtol=0)
        width = int(mask.sum(1).max())  # the rows' longest response
        assert not a[:, width:].any()  # the trimmed response positions are zeros
        assert width == TR or b[:, width:].abs().sum() > 0  # (computed without trimming)


def test_trimmed_forward_keeps_gradients():
    ro, model = _rollout(), tiny_gpt()
    logits = forward_responses(model, ro, torch.tensor([0, 2]))  # (2, TR, V)
    logits[:, 0].sum().backward()
    assert model.lm_head.weight.grad is not None and model.lm_head.weight.grad.abs().sum() > 0


@pytest.mark.parametrize("by_length", [False, True])
def test_every_row_is_used_once_per_epoch(by_length):
    ro = _rollout()
    gen = torch.Generator().manual_seed(0)
    epochs = [minibatches(ro, 3, gen, by_length) for _ in range(4)]
    for mbs in epochs:
        assert sorted(torch.cat(mbs).tolist()) == list(range(N))
        assert [len(mb) for mb in mbs].count(3) == N // 3
    if by_length:  # each minibatch holds a run of the rows sorted by length
        lengths = ro.prompt_mask.sum(1) + ro.response_mask.sum(1)  # (N,)
        spans = sorted((int(lengths[mb].min()), int(lengths[mb].max())) for mb in epochs[0])
        assert all(hi <= lo for (_, hi), (lo, _) in zip(spans, spans[1:]))
    assert len({tuple(torch.cat(mbs).tolist()) for mbs in epochs}) > 1  # shuffled each epoch


def test_default_minibatches_are_the_plain_shuffle():
    """Bucketing off: the same minibatches (and random stream) as a plain randperm split."""
    ro = _rollout()
    got = minibatches(ro, 3, torch.Generator().manual_seed(5))
    want = torch.randperm(N, generator=torch.Generator().manual_seed(5)).split(3)
    assert all(torch.equal(a, b) for a, b in zip(got, want))


def _update_stats(**options) -> dict:
    """One PPO update (1 epoch, 2 minibatches) of the tiny actor-critic from a fixed start."""
    ro = _rollout()
    g = torch.Generator().manual_seed(3)
    old_logp = -2.5 + 0.3 * torch.randn(N, TR, generator=g)
    values, adv, ret = (torch.randn(N, TR, generator=g) for _ in range(3))
    torch.manual_seed(0)
    agent = _actor_critic()
    cfg = replace(PPOConfig(), update_epochs=1, num_minibatches=2, target_kl=None,
                  ent_coef=0.01, **options)
    mask = ro.response_mask.float()
    return ppo_update(update_model(agent, cfg), adam(agent.parameters(), 1e-3), ro, mask,
                      old_logp, values, adv, ret, cfg, torch.Generator().manual_seed(0), 1,
                      None, 0)


@pytest.fixture
def bf16_everywhere(monkeypatch):
    """Lets `--autocast-bf16` run on a CPU without native bfloat16 (e.g. AVX2 only), where the
    option itself is refused: torch then runs bf16 matmuls without the native instructions,
    slowly, so the option's wiring is tested on every machine."""
    monkeypatch.setattr(training, "bf16_supported", lambda device: True)


@pytest.mark.parametrize("option", [
    pytest.param({"autocast_bf16": True}, id="bf16"),
    pytest.param({"compile": True}, id="compile", marks=pytest.mark.slow),  # ~30 s compile
    pytest.param({"trim_padding": False}, id="no-trim"),
])
def test_update_options_give_losses_close_to_float32(option, bf16_everywhere):
    base, got = _update_stats(), _update_stats(**option)
    tol = 0.05 if "autocast_bf16" in option else 1e-4  # bf16 keeps ~3 significant digits
    for key in ("pg", "vf", "ent"):
        assert all(math.isfinite(x) for x in got[key])
        assert got[key] == pytest.approx(base[key], rel=tol, abs=tol), key
    if "autocast_bf16" in option:  # bf16 did run: not the float32 numbers exactly
        assert got["pg"] != base["pg"]


def test_autocast_bf16_is_refused_where_unsupported(monkeypatch):
    monkeypatch.setattr(training, "bf16_supported", lambda device: False)
    with pytest.raises(ValueError, match="autocast_bf16=True: device cpu has no bfloat16"):
        update_model(tiny_gpt(), replace(PPOConfig(), autocast_bf16=True))
    assert update_model(m := tiny_gpt(), PPOConfig()) is m  # float32, not compiled: itself


needs_assets = pytest.mark.skipif(not (ASSETS_DIR / "sft.safetensors").exists(),
                                  reason="no shipped assets")
TINY = {"num_envs": 8, "max_new_tokens": 16, "threads": 1, "progress": False,
        "tensorboard": False, "target_kl": None, "seed": 3}


def _ppo_iteration(**options) -> dict:
    algo = PPO(PPOConfig(**TINY, **options))
    try:
        return algo.iteration(1, 0.0, training.PhaseTimer())
    finally:
        algo.setup.envs.close()


@needs_assets
@pytest.mark.parametrize("option", [
    pytest.param({"autocast_bf16": True}, id="bf16"),
    pytest.param({"bucket_by_length": True}, id="bucket"),
    pytest.param({"compile": True}, id="compile", marks=pytest.mark.slow),
])
def test_one_ppo_iteration_with_each_option(option, bf16_everywhere):
    """The same rollout (same seed); the update's losses finite and, where the minibatches
    are the same, close to the float32 path's."""
    base, got = _ppo_iteration(), _ppo_iteration(**option)
    assert got["env/reward_mean"] == base["env/reward_mean"]  # the rollout precedes the update
    for key in ("losses/policy_loss", "losses/value_loss", "objective/entropy"):
        assert math.isfinite(got[key]), key
        if "bucket_by_length" not in option:
            tol = 0.05 if "autocast_bf16" in option else 1e-3
            assert got[key] == pytest.approx(base[key], rel=tol, abs=tol), key


@needs_assets
@pytest.mark.parametrize("algo", ["grpo", "rloo", "reinforce", "reinforce++"])
def test_critic_free_agents_take_autocast_bf16(algo, bf16_everywhere):
    from agents.grpo import GRPO, GRPOConfig
    from agents.reinforce import Reinforce, ReinforceConfig
    from agents.reinforce_pp import ReinforcePP, ReinforcePPConfig
    from agents.rloo import RLOO, RLOOConfig

    cls, config = {"grpo": (GRPO, GRPOConfig), "rloo": (RLOO, RLOOConfig),
                   "reinforce": (Reinforce, ReinforceConfig),
                   "reinforce++": (ReinforcePP, ReinforcePPConfig)}[algo]
    agent = cls(config(num_envs=8, max_new_tokens=8, threads=1, progress=False,
                       tensorboard=False, autocast_bf16=True))
    try:
        metrics = agent.iteration(1, 0.0, training.PhaseTimer())
    finally:
        agent.setup.envs.close()
    assert math.isfinite(metrics["losses/policy_loss"])


@pytest.mark.parametrize("option", ["compile", "autocast_bf16"])
def test_agents_without_an_lm_update_refuse_the_update_options(option):
    from agents import best_of_n, sb3

    with pytest.raises(ValueError, match="best-of-n trains nothing"):
        best_of_n.train(replace(best_of_n.BestOfNConfig(), **{option: True}))
    with pytest.raises(ValueError, match="apply to the LM agents only"):
        sb3.train(replace(sb3.SB3Config(), **{option: True}))
