"""TextGenVectorEnv: natively batched, and equal to N single envs."""


import gymnasium as gym
import numpy as np
import pytest
from conftest import text_reward
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.assets import ASSETS_DIR
from textenv.env import TextGenEnv
from textenv.vector_env import TextGenVectorEnv

ASSETS = ASSETS_DIR  # the shipped default assets (committed in textenv/assets/reviews/)


def make_vec(n, **kw) -> TextGenVectorEnv:
    kw.setdefault("reward", text_reward)
    kw.setdefault("assets_dir", ASSETS)
    return TextGenVectorEnv(n, **kw)


def random_actions(rng, n, vocab, eos_id, p_eos=0.25):
    a = rng.integers(0, vocab, n)
    a[rng.random(n) < p_eos] = eos_id
    return a


def assert_infos_equal(a: dict, b: dict):
    assert set(a) == set(b)
    for key in a:
        x, y = a[key], b[key]
        assert x.dtype == y.dtype, key
        if x.dtype == object:
            assert list(x) == list(y), key
        else:
            np.testing.assert_allclose(x, y, atol=1e-5, err_msg=key)


def sync_reference(n, **kw):
    """gymnasium's SyncVectorEnv over N single envs: what the native vector env must equal."""
    return SyncVectorEnv([lambda: TextGenEnv(**kw) for _ in range(n)])


def check_obs(o1, o2):
    if isinstance(o1, dict):
        for k in o1:
            np.testing.assert_array_equal(o1[k], o2[k])
    else:
        np.testing.assert_array_equal(o1, o2)


def assert_same_trajectories(vec, ref, steps=40, before_step=None, seed=11):
    """Same seeds + same actions: same observations, rewards, terminations and infos."""
    assert ref.metadata["autoreset_mode"] == vec.metadata["autoreset_mode"]
    (o1, i1), (o2, i2) = vec.reset(seed=seed), ref.reset(seed=seed)
    check_obs(o1, o2)
    assert_infos_equal(i1, i2)
    rng = np.random.default_rng(0)
    n, V, eos = vec.num_envs, vec.single_action_space.n, vec.unwrapped.tokenizer.eos_id
    resets, ended = 0, np.zeros(n, dtype=bool)
    for _ in range(steps):
        if before_step is not None:
            before_step(ended)
        actions = random_actions(rng, n, V, eos)
        o1, r1, t1, tr1, i1 = vec.step(actions)
        o2, r2, t2, tr2, i2 = ref.step(actions)
        check_obs(o1, o2)
        np.testing.assert_allclose(r1, r2, atol=1e-5)
        np.testing.assert_array_equal(t1, t2)
        np.testing.assert_array_equal(tr1, tr2)
        assert_infos_equal(i1, i2)
        resets, ended = resets + int(t1.sum()), t1
        assert r1.dtype == np.float64 and t1.dtype == bool
    return resets


@pytest.mark.parametrize("kw", [{}, {"observation_mode": "dict"}])
def test_equals_single_envs_across_autoresets(kw):
    """The native vector env equals SyncVectorEnv over N TextGenEnvs (NEXT_STEP autoreset,
    seeds s + i). The same with the reference wrappers on: tests/test_wrappers.py."""
    n, kw = 3, dict(kw, reward=text_reward, assets_dir=ASSETS, max_new_tokens=5)
    resets = assert_same_trajectories(TextGenVectorEnv(n, **kw), sync_reference(n, **kw))
    assert resets >= 12  # the run did cross many autoresets


def test_autoreset_next_step_semantics():
    envs = make_vec(2, max_new_tokens=3)
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    obs, info = envs.reset(seed=0)
    eos = envs.tokenizer.eos_id
    obs, r, term, trunc, info = envs.step(np.array([eos, 4]))
    assert term.tolist() == [True, False] and info["_eos"].tolist() == [True, False]
    assert info["response"][0] == "<eos>" and info["length"][0] == 1
    assert envs.response_lengths.tolist() == [1, 1]
    start = envs.prompt_lengths[1]
    assert obs[1, start:start + 1].tolist() == [4]
    obs, r, term, trunc, info = envs.step(np.array([4, 4]))  # env 0 resets, its action ignored
    assert r[0] == 0.0 and not term[0] and info["_prompt"].tolist() == [True, False]
    prompt_ids = [envs.tokenizer.bos_id] + envs.tokenizer.encode(info["prompt"][0])
    assert obs[0, :len(prompt_ids)].tolist() == prompt_ids
    assert (obs[0, len(prompt_ids):] == envs.tokenizer.pad_id).all()
    obs, r, term, trunc, info = envs.step(np.array([4, 4]))  # env 1 hits max_new_tokens
    assert term.tolist() == [False, True] and not info["eos"][1] and info["length"][1] == 3


def test_finished_envs_scored_in_one_batch():
    calls = []

    def reward(prompts, responses):
        calls.append(len(prompts))
        return np.zeros(len(prompts))

    envs = make_vec(4, reward=reward, max_new_tokens=6)
    envs.reset(seed=0)
    eos = envs.tokenizer.eos_id
    envs.step(np.array([eos, 4, eos, eos]))
    envs.step(np.array([4, eos, 4, 4]))  # 0, 2, 3 reset; 1 finishes
    assert calls == [3, 1]


def test_reset_options_and_seeds():
    envs = make_vec(3)
    p = ["write a positive review of the pizza about the crust , short :",
         "write a negative review of the pizza about the crust , long :",
         "write a positive review of the pizza about the crust , short :"]
    _, info = envs.reset(seed=0, options={"prompts": p})
    assert list(info["prompt"]) == p
    _, info = envs.reset(options={"prompt": p[1]})
    assert list(info["prompt"]) == [p[1]] * 3
    with pytest.raises(ValueError, match="3 envs"):
        envs.reset(options={"prompts": p[:2]})
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        envs.reset(options={"prompt": p[0] + " " + p[0]})
    # A list of seeds is the same as N single envs with those seeds.
    _, info = envs.reset(seed=[5, 9, 2])
    singles = [TextGenEnv(reward="gold", assets_dir=ASSETS).reset(seed=s)[1]["prompt"]
               for s in (5, 9, 2)]
    assert list(info["prompt"]) == singles
    _, a = envs.reset(seed=4)
    _, b = envs.reset(seed=4)
    assert list(a["prompt"]) == list(b["prompt"])


def test_errors():
    envs = make_vec(2)
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.array([4, 4]))
    envs.reset(seed=0)
    V = envs.single_action_space.n
    with pytest.raises(ValueError, match=rf"\[0, {V - 1}\]"):
        envs.step(np.array([4, V]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        envs.step(np.array([4, 4, 4]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        envs.step(np.array([4.0, 4.0]))
    with pytest.raises(ValueError, match="reviews"):
        make_vec(2, task="poems")


def test_a_step_that_raises_needs_a_reset():
    """A reward function that fails leaves episodes in an unknown state: the next step is
    refused until reset, instead of carrying episodes past their <eos>."""
    calls = []

    def flaky(prompts, responses):
        calls.append(len(prompts))
        if len(calls) == 1:
            raise RuntimeError("reward server down")
        return np.zeros(len(prompts))

    envs = make_vec(2, reward=flaky, max_new_tokens=4)
    envs.reset(seed=0)
    with pytest.raises(RuntimeError, match="reward server down"):
        envs.step(np.array([envs.tokenizer.eos_id, 4]))
    with pytest.raises(RuntimeError, match="reset"):
        envs.step(np.array([4, 4]))
    obs, _ = envs.reset(seed=0)
    _, r, term, _, _ = envs.step(np.array([envs.tokenizer.eos_id, 4]))
    assert term.tolist() == [True, False]


def test_render():
    envs = make_vec(3, render_mode="ansi")
    _, info = envs.reset(seed=0)
    assert envs.render() == tuple(info["prompt"])
    assert envs.action_space.contains(envs.action_space.sample())


def test_make_vec_modes():
    kw = dict(reward="gold", assets_dir=ASSETS, max_new_tokens=3)
    envs = gym.make_vec("TextGen-v0", num_envs=3, **kw)
    assert isinstance(envs.unwrapped, TextGenVectorEnv) and envs.num_envs == 3
    assert envs.metadata["autoreset_mode"] == AutoresetMode.NEXT_STEP
    results = {}
    for mode, n in (("vector_entry_point", 2), ("sync", 2), ("async", 2)):
        envs = gym.make_vec("TextGen-v0", num_envs=n, vectorization_mode=mode, **kw)
        obs, _ = envs.reset(seed=1)
        steps = [obs]
        last = envs.unwrapped.single_action_space.n - 1
        for _ in range(4):
            obs, r, term, trunc, info = envs.step(np.array([4, last]))
            steps.append(obs)
            steps.append(r)
        envs.close()
        results[mode] = steps
    for mode in ("sync", "async"):
        for x, y in zip(results["vector_entry_point"], results[mode]):
            np.testing.assert_allclose(x, y, atol=1e-6)
