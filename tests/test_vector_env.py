"""TextGenVectorEnv: natively batched, and equal to N single envs."""


import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.vector import AutoresetMode, SyncVectorEnv

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.assets import ASSETS_DIR
from textenv.env import TextGenEnv
from textenv.model import GPT
from textenv.vector_env import TextGenVectorEnv

ASSETS = ASSETS_DIR  # the shipped default assets (committed in textenv/assets/)


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models on a shared 2-core box: one thread avoids contention and is faster.
    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


def text_reward(prompts, responses):
    """A cheap reward that depends on the text (so mixing up envs would show)."""
    return [len(r.split()) + 0.01 * len(p) for p, r in zip(prompts, responses)]


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


@pytest.mark.parametrize("kw", [
    {},
    {"kl_coef": 0.2, "action_mask": "top_k", "action_mask_k": 10},
    {"kl_coef": 0.2, "observation_mode": "dict"},
])
def test_equals_single_envs_across_autoresets(kw):
    """Same seeds + same actions: same observations, rewards, terminations and infos as
    gymnasium's SyncVectorEnv over N TextGenEnvs (NEXT_STEP autoreset, seeds s + i)."""
    n, kw = 3, dict(kw, reward=text_reward, assets_dir=ASSETS, max_new_tokens=5)
    vec = TextGenVectorEnv(n, **kw)
    ref = SyncVectorEnv([lambda: TextGenEnv(**kw) for _ in range(n)])
    assert ref.metadata["autoreset_mode"] == vec.metadata["autoreset_mode"]

    def check_obs(o1, o2):
        if isinstance(o1, dict):
            for k in o1:
                np.testing.assert_array_equal(o1[k], o2[k])
        else:
            np.testing.assert_array_equal(o1, o2)

    (o1, i1), (o2, i2) = vec.reset(seed=11), ref.reset(seed=11)
    check_obs(o1, o2)
    assert_infos_equal(i1, i2)
    rng = np.random.default_rng(0)
    V, eos = vec.single_action_space.n, vec.tokenizer.eos_id
    resets, ended = 0, np.zeros(n, dtype=bool)
    # 40 steps of episodes <= 5 tokens: many partial resets (the reference prefills only the
    # new prompts) and several full re-prefills when its cache fills up.
    for _ in range(40):
        if "action_mask" in kw:  # envs about to autoreset allow everything
            singles = [np.ones(V, bool) if d else e.action_masks() for e, d in zip(ref.envs, ended)]
            np.testing.assert_array_equal(vec.action_masks(), np.stack(singles))
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


def test_reference_one_batched_forward_per_step():
    ref = GPT.load(ASSETS, "sft")
    shapes = []
    forward = ref.forward

    def recording_forward(input_ids, attention_mask=None, position_ids=None, kv_cache=None):
        shapes.append(tuple(input_ids.shape))
        return forward(input_ids, attention_mask, position_ids, kv_cache)

    ref.forward = recording_forward
    envs = make_vec(3, reference=ref, kl_coef=0.1, max_new_tokens=6)
    envs.reset(seed=0)
    assert len(shapes) == 1 and shapes[0][0] == 3  # one prefill of the whole batch
    shapes.clear()
    for _ in range(3):
        envs.step(np.array([4, 5, 6]))
    assert shapes == [(3, 1)] * 3  # one 1-token forward per step for all envs
    envs.step(np.array([envs.tokenizer.eos_id, 5, 6]))
    shapes.clear()
    envs.step(np.array([4, 5, 6]))  # env 0 autoresets: only its new prompt is prefilled
    assert len(shapes) == 2 and shapes[0] == (3, 1)
    assert shapes[1][0] == 1 and shapes[1][1] == envs.prompt_lengths[0]


def test_reference_not_run_when_not_needed():
    ref = GPT.load(ASSETS, "sft")

    def boom(*args, **kwargs):
        raise AssertionError("the reference policy must not run")

    ref.forward = boom
    envs = make_vec(2, reference=ref, max_new_tokens=3)
    envs.reset(seed=0)
    for _ in range(5):
        _, _, _, _, info = envs.step(np.array([4, envs.tokenizer.eos_id]))
        assert "ref_logprob" not in info
    assert envs.action_masks().all()


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


def test_action_masks_and_render():
    envs = make_vec(3, action_mask="top_k", action_mask_k=6, render_mode="ansi")
    _, info = envs.reset(seed=0)
    m = envs.action_masks()
    assert m.shape == (3, envs.single_action_space.n) and (m.sum(1) == 6).all()
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
