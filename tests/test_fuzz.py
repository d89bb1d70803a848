"""Fuzzing: random programs of resets (with seeds, options, prompts) and steps (any in-space
action, specials included), across single and vector envs, reward presets, wrappers and
observation modes. No crash, finite rewards, every observation in its space, episodes end
as the contract says, and the vector env equals N single envs. Together the tests below run
well over 500 episodes."""

import gymnasium as gym
import numpy as np
import pytest
from conftest import text_reward
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from test_vector_env import assert_infos_equal, check_obs

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.assets import ASSETS_DIR
from textenv.env import TextGenEnv
from textenv.vector_env import TextGenVectorEnv
from textenv.wrappers import (
    KLPenalty,
    ReferenceActionMask,
    VectorKLPenalty,
    VectorReferenceActionMask,
)

MAX_NEW = 6
FINAL_KEYS = {"prompt", "response", "reward_model_score", "gold_score", "length", "eos"}
PROMPTS = ["write a positive review of the pizza about the crust , short :",
           "give me a negative review of the movie about the jokes , long :",
           "please write a positive review of the laptop about the keyboard , long :"]
REWARDS = {"gold": "gold", "learned": "learned", "callable": text_reward}
WRAPPERS = ("none", "kl", "mask", "kl+mask")

EPISODES = {"single": 0, "vector": 0}


def wrap(env, wrappers: str, vector: bool):
    if "kl" in wrappers:
        env = (VectorKLPenalty if vector else KLPenalty)(env, kl_coef=0.05)
    if "mask" in wrappers:
        env = (VectorReferenceActionMask if vector else ReferenceActionMask)(env, k=8)
    return env


_SINGLE = {}


def single_env(reward: str, wrappers: str, observation_mode: str):
    key = (reward, wrappers, observation_mode)
    if key not in _SINGLE:
        env = TextGenEnv(reward=REWARDS[reward], max_new_tokens=MAX_NEW,
                         observation_mode=observation_mode, assets_dir=ASSETS_DIR)
        _SINGLE[key] = wrap(env, wrappers, vector=False)
    return _SINGLE[key]


reset_op = st.tuples(st.just("reset"), st.one_of(st.none(), st.integers(0, 2**31 - 1)),
                     st.one_of(st.none(), st.sampled_from(PROMPTS)))
step_op = st.tuples(st.just("step"), st.one_of(st.just(2), st.integers(0, 10**4)), st.none())


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reward=st.sampled_from(sorted(REWARDS)), wrappers=st.sampled_from(WRAPPERS),
       observation_mode=st.sampled_from(["box", "dict"]),
       program=st.lists(st.one_of(reset_op, step_op, step_op, step_op, step_op), min_size=40,
                        max_size=80))
def test_single_env_random_programs(reward, wrappers, observation_mode, program):
    env = single_env(reward, wrappers, observation_mode)
    V = env.action_space.n
    eos = env.unwrapped.tokenizer.eos_id
    env.reset(seed=0)
    steps, done = 0, False
    for op, a, b in program:
        if op == "reset" or done:
            options = {"prompt": b} if op == "reset" and b is not None else None
            obs, info = env.reset(seed=a if op == "reset" else None, options=options)
            assert env.observation_space.contains(obs)
            assert options is None or info["prompt"] == b
            steps, done = 0, False
            continue
        if "mask" in wrappers:
            mask = env.get_wrapper_attr("action_masks")()
            assert mask.shape == (V,) and mask.sum() == 8
        action = a % V  # any in-space action, specials included
        obs, r, term, trunc, info = env.step(action)
        steps += 1
        assert env.observation_space.contains(obs)
        assert np.isfinite(r) and not trunc
        assert ("ref_logprob" in info) == ("kl" in wrappers)
        if term:
            EPISODES["single"] += 1
            assert FINAL_KEYS <= set(info) and steps == info["length"] <= MAX_NEW
            assert info["eos"] == (action == eos) == info["response"].endswith("<eos>")
            assert 0.0 <= info["gold_score"] <= 1.0 and np.isfinite(info["reward_model_score"])
            done = True
        assert steps < MAX_NEW or done


_VECTOR = {}


def vector_pair(reward: str, wrappers: str, observation_mode: str, n: int = 3):
    """(native vector env, SyncVectorEnv over n single envs), wrapped alike."""
    key = (reward, wrappers, observation_mode)
    if key not in _VECTOR:
        kw = dict(reward=REWARDS[reward], max_new_tokens=MAX_NEW,
                  observation_mode=observation_mode, assets_dir=ASSETS_DIR)
        vec = wrap(TextGenVectorEnv(n, **kw), wrappers, vector=True)
        sync = gym.vector.SyncVectorEnv([lambda: TextGenEnv(**kw) for _ in range(n)])
        sync.envs = [wrap(e, wrappers, vector=False) for e in sync.envs]
        _VECTOR[key] = vec, sync
    return _VECTOR[key]


vector_reset = st.tuples(st.just("reset"), st.integers(0, 2**31 - 1),
                         st.one_of(st.none(), st.sampled_from(PROMPTS)))
vector_step = st.tuples(st.just("step"), st.lists(st.one_of(st.just(2), st.integers(0, 10**4)),
                                                  min_size=3, max_size=3), st.none())


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(reward=st.sampled_from(["gold", "callable"]), wrappers=st.sampled_from(WRAPPERS),
       observation_mode=st.sampled_from(["box", "dict"]),
       program=st.lists(st.one_of(vector_reset, *[vector_step] * 8), min_size=25, max_size=40))
def test_vector_env_equals_single_envs_on_random_programs(reward, wrappers, observation_mode,
                                                          program):
    vec, sync = vector_pair(reward, wrappers, observation_mode)
    V = vec.single_action_space.n
    vec.reset(seed=0), sync.reset(seed=0)
    ended = np.zeros(vec.num_envs, dtype=bool)
    for op, a, b in program:
        if op == "reset":  # SyncVectorEnv passes the same options to every env
            options = {"prompt": b} if b else None
            (o1, i1), (o2, i2) = vec.reset(seed=a, options=options), sync.reset(seed=a,
                                                                                options=options)
            check_obs(o1, o2)
            assert_infos_equal(i1, i2)
            ended[:] = False
            continue
        if "mask" in wrappers:
            want = [np.ones(V, bool) if d else e.action_masks() for e, d in zip(sync.envs, ended)]
            np.testing.assert_array_equal(vec.action_masks(), np.stack(want))
        actions = np.asarray(a) % V
        o1, r1, t1, tr1, i1 = vec.step(actions)
        o2, r2, t2, tr2, i2 = sync.step(actions)
        check_obs(o1, o2)
        assert np.isfinite(r1).all()
        np.testing.assert_allclose(r1, r2, atol=1e-5)
        np.testing.assert_array_equal(t1, t2)
        assert_infos_equal(i1, i2)
        EPISODES["vector"] += int(t1.sum())
        ended = t1


def test_enough_episodes_were_fuzzed():
    """Runs after the two property tests (pytest keeps file order)."""
    if EPISODES["single"] == 0:
        pytest.skip("run with the whole module")
    assert EPISODES["single"] + EPISODES["vector"] >= 500, EPISODES
