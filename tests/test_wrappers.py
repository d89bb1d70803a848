"""The reference-policy wrappers: KL shaping and action masks, single and vector."""

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import text_reward
from test_vector_env import assert_same_trajectories, sync_reference

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.assets import ASSETS_DIR
from textenv.env import TextGenEnv
from textenv.model import GPT
from textenv.vector_env import TextGenVectorEnv
from textenv.wrappers import (
    KLPenalty,
    ReferenceActionMask,
    VectorKLPenalty,
    VectorReferenceActionMask,
)

ASSETS = ASSETS_DIR


def make(**kw) -> TextGenEnv:
    kw.setdefault("reward", "gold")
    kw.setdefault("assets_dir", ASSETS)
    return TextGenEnv(**kw)


def recording(ref: GPT, calls: list) -> GPT:
    """`ref` with its forward recording (input shape, kv_cache) of every call."""
    forward = ref.forward

    def recording_forward(input_ids, attention_mask=None, position_ids=None, kv_cache=None):
        calls.append((tuple(input_ids.shape), kv_cache))
        return forward(input_ids, attention_mask, position_ids, kv_cache)

    ref.forward = recording_forward
    return ref


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("observation_mode", ["box", "dict"])
def test_env_checkers_with_wrappers(observation_mode):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("TextGen-v0", reward="gold", assets_dir=ASSETS, max_new_tokens=6,
                   observation_mode=observation_mode)
    env = ReferenceActionMask(KLPenalty(env, kl_coef=0.1), mode="top_p", p=0.9)
    gym_check_env(env)
    sb3_check_env(env)


def test_kl_shaping_matches_full_forward():
    ref = GPT.load(ASSETS, "sft")  # an independent copy of the reference policy
    env = KLPenalty(make(max_new_tokens=10), kl_coef=0.3)
    mask = ReferenceActionMask(env, mode="top_k", k=1)  # the reference's top token
    obs, info = env.reset(seed=5)
    rng = np.random.default_rng(0)
    rewards, ref_lps, actions, done = [], [], [], False
    while not done:
        # Mix likely tokens (top of the reference) with arbitrary ones.
        a = int(np.flatnonzero(mask.action_masks())[0]) if rng.random() < 0.5 \
            else int(rng.integers(4, env.action_space.n))
        obs, r, done, _, info = env.step(a)
        rewards.append(r)
        ref_lps.append(info["ref_logprob"])
        actions.append(a)
    prompt_ids = [env.unwrapped.tokenizer.bos_id] + env.unwrapped.tokenizer.encode(info["prompt"])
    with torch.no_grad():
        lp = ref.token_logprobs(torch.tensor([prompt_ids + actions]))[0]  # (T-1,)
    expected = 0.3 * lp[len(prompt_ids) - 1:].numpy()  # log pi_ref(a_t | s_t) per step
    shaping = np.array(rewards)
    shaping[-1] -= info["reward_model_score"]
    np.testing.assert_allclose(shaping, expected, atol=1e-5)
    np.testing.assert_allclose(0.3 * np.array(ref_lps), expected, atol=1e-5)


def test_reference_uses_kv_cache_incrementally_and_stacked_wrappers_share_it():
    calls = []
    ref = recording(GPT.load(ASSETS, "sft"), calls)
    env = ReferenceActionMask(KLPenalty(make(max_new_tokens=6), kl_coef=0.1, reference=ref),
                              k=5, reference=ref)
    assert env.reference_tracker is env.env.reference_tracker  # one tracker for the stack
    obs, info = env.reset(seed=0)
    n_prompt = 1 + len(info["prompt"].split())
    for a in [4, 5, 6, 7, 8, 9]:
        env.action_masks()
        env.step(a)
    cache = env.reference_tracker.cache
    # One prefill of the prompt, then one 1-token forward per step (the state after the
    # last step is never asked for), however many wrappers read it.
    assert [c[0] for c in calls] == [(1, n_prompt)] + [(1, 1)] * 5
    assert all(c[1] is cache for c in calls)


def test_reference_not_run_without_wrappers():
    from textenv.assets import load_reference

    ref = load_reference(ASSETS)
    calls = []
    forward = ref.forward
    ref.forward = lambda *a, **k: calls.append(1) or forward(*a, **k)
    try:
        env = make(max_new_tokens=5)
        env.reset(seed=0)
        for a in [4, 5, 6, 7, 8]:
            _, _, _, _, info = env.step(a)
        assert "ref_logprob" not in info and calls == []
    finally:
        del ref.forward


def test_action_masks():
    env = ReferenceActionMask(make(), mode="top_k", k=7)
    with pytest.raises(RuntimeError, match="reset"):
        env.action_masks()
    env.reset(seed=0)
    tracker = env.reference_tracker
    for a in (4, 5):
        m = env.action_masks()
        assert m.shape == (env.action_space.n,) and m.dtype == bool and m.sum() == 7
        logp = tracker.sync()[0].numpy()
        assert logp[m].min() >= logp[~m].max()  # the 7 most likely tokens
        env.step(a)

    env = ReferenceActionMask(make(), mode="top_p", p=0.9)
    env.reset(seed=0)
    m = env.action_masks()
    p = np.exp(env.reference_tracker.sync()[0].numpy())
    assert p[m].sum() >= 0.9 - 1e-6 and p[m].sum() - p[m].min() < 0.9  # smallest nucleus


def test_bad_wrapper_arguments():
    with pytest.raises(ValueError, match="'top_k', 'top_p'"):
        ReferenceActionMask(make(), mode="top_q")
    with pytest.raises(ValueError, match="k must be"):
        ReferenceActionMask(make(), k=0)
    with pytest.raises(ValueError, match="kl_coef"):
        KLPenalty(make(), kl_coef=-1.0)
    with pytest.raises(ValueError, match="block_size"):
        KLPenalty(make(max_new_tokens=500), kl_coef=0.1)
    with pytest.raises(TypeError, match="TextGen env"):
        KLPenalty(gym.make("CartPole-v1"))


def test_maskable_ppo_runs():
    from sb3_contrib import MaskablePPO

    env = ReferenceActionMask(make(max_new_tokens=4), mode="top_k", k=5)
    model = MaskablePPO("MlpPolicy", env, n_steps=8, batch_size=8, n_epochs=1, seed=0,
                        device="cpu")
    model.learn(8)


# ---- vector ----------------------------------------------------------------------------------
@pytest.mark.parametrize("observation_mode", ["box", "dict"])
def test_vector_wrappers_equal_single_wrappers_across_autoresets(observation_mode):
    """VectorKLPenalty + VectorReferenceActionMask over the native vector env equal the
    single wrappers over N single envs: rewards, ref_logprob infos and masks, across many
    partial autoresets (the reference prefills only the new prompts) and full re-prefills
    when its cache fills up."""
    n = 3
    kw = dict(reward=text_reward, assets_dir=ASSETS, max_new_tokens=5,
              observation_mode=observation_mode)
    vec = VectorReferenceActionMask(VectorKLPenalty(TextGenVectorEnv(n, **kw), kl_coef=0.2),
                                    k=10)
    singles = sync_reference(n, **kw)
    singles.envs = [ReferenceActionMask(KLPenalty(e, kl_coef=0.2), k=10) for e in singles.envs]
    V = vec.single_action_space.n

    def same_masks(ended):  # envs about to autoreset allow everything
        want = [np.ones(V, bool) if d else e.action_masks() for e, d in zip(singles.envs, ended)]
        np.testing.assert_array_equal(vec.action_masks(), np.stack(want))

    resets = assert_same_trajectories(vec, singles, before_step=same_masks)
    assert resets >= 12


def test_vector_reference_one_batched_forward_per_step():
    calls = []
    ref = recording(GPT.load(ASSETS, "sft"), calls)
    envs = VectorKLPenalty(TextGenVectorEnv(3, reward="gold", assets_dir=ASSETS,
                                            max_new_tokens=6), kl_coef=0.1, reference=ref)
    envs.reset(seed=0)
    envs.step(np.array([4, 5, 6]))  # the first step prefills the whole batch
    assert len(calls) == 1 and calls[0][0][0] == 3
    calls.clear()
    for _ in range(3):
        _, _, _, _, info = envs.step(np.array([4, 5, 6]))
    assert [c[0] for c in calls] == [(3, 1)] * 3  # one 1-token forward per step for all envs
    assert info["_ref_logprob"].all() and np.isfinite(info["ref_logprob"]).all()
    envs.step(np.array([envs.unwrapped.tokenizer.eos_id, 5, 6]))
    calls.clear()
    _, _, _, _, info = envs.step(np.array([4, 5, 6]))  # env 0 autoresets: its action ignored
    assert info["_ref_logprob"].tolist() == [False, True, True]
    calls.clear()
    envs.step(np.array([4, 5, 6]))  # now the new prompt is prefilled on its own
    assert len(calls) == 2 and calls[0][0] == (3, 1)
    assert calls[1][0][0] == 1 and calls[1][0][1] == envs.unwrapped.prompt_lengths[0]


def test_vector_masks_shape_and_sb3_style_lookup():
    envs = VectorReferenceActionMask(TextGenVectorEnv(3, reward="gold", assets_dir=ASSETS),
                                     mode="top_k", k=6)
    envs.reset(seed=0)
    m = envs.action_masks()
    assert m.shape == (3, envs.single_action_space.n) and (m.sum(1) == 6).all()
