"""TextGen-v0, the single env: the env contract (docs/environment.md)."""

import shutil
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import textenv  # noqa: F401  (registers TextGen-v0)
from textenv.assets import ASSETS_DIR
from textenv.env import TextGenEnv
from textenv.rewards import RewardModel

ASSETS = ASSETS_DIR  # the shipped default assets (committed in textenv/assets/reviews/)


def make(**kw) -> TextGenEnv:
    kw.setdefault("reward", "gold")
    kw.setdefault("assets_dir", ASSETS)
    return TextGenEnv(**kw)


def run_episode(env, actions, seed=None, options=None):
    """Step `actions` until the episode ends; returns (obs list, rewards, final info)."""
    obs, info = env.reset(seed=seed, options=options)
    observations, rewards = [obs], []
    for a in actions:
        obs, r, term, trunc, info = env.step(a)
        observations.append(obs)
        rewards.append(r)
        assert not trunc
        if term:
            break
    return observations, rewards, info


FINAL_KEYS = {"prompt", "response", "reward_model_score", "gold_score", "length", "eos"}


# ---- API conformance -----------------------------------------------------------------------
@pytest.mark.parametrize("kw", [{}, {"observation_mode": "dict", "max_new_tokens": 6}])
def test_env_checkers(kw):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("TextGen-v0", reward="gold", assets_dir=ASSETS, **kw)
    gym_check_env(env.unwrapped)
    sb3_check_env(env)


def test_spaces_and_layout():
    env = make(max_new_tokens=5)
    L = 1 + env.task.max_prompt_tokens + 5
    assert env.observation_space.shape == (L,) and env.observation_space.dtype == np.int64
    assert env.action_space == gym.spaces.Discrete(env.tokenizer.vocab_size)
    obs, info = env.reset(seed=0)
    prompt_ids = [env.tokenizer.bos_id] + env.tokenizer.encode(info["prompt"])
    n = len(prompt_ids)
    assert obs.tolist() == prompt_ids + [env.tokenizer.pad_id] * (L - n)
    word = env.tokenizer.encode("the")[0]
    obs, *_ = env.step(word)
    assert obs[n] == word and (obs[n + 1:] == env.tokenizer.pad_id).all()


def test_dict_observation_mask():
    env = make(observation_mode="dict", max_new_tokens=4)
    obs, info = env.reset(seed=0)
    n = 1 + len(info["prompt"].split())
    assert obs["attention_mask"].sum() == n and obs["attention_mask"][:n].all()
    obs, *_ = env.step(env.tokenizer.pad_id)  # a <pad> action is still a real token
    assert obs["attention_mask"].sum() == n + 1 and obs["input_ids"][n] == env.tokenizer.pad_id
    assert obs["prompt_mask"].sum() == n and obs["prompt_mask"][:n].all()  # the prompt ends


# ---- errors ----------------------------------------------------------------------------------
def test_out_of_space_actions_raise():
    env = make()
    env.reset(seed=0)
    V = env.action_space.n
    for bad in (V, -1, 10**6, 1.0, "a", np.array([1, 2])):
        with pytest.raises(ValueError, match=rf"\[0, {V - 1}\]"):
            env.step(bad)
    env.step(np.int64(V - 1))  # the largest id is fine, numpy scalars and 0-d arrays too
    env.step(np.array(4))


def test_step_before_reset_and_after_end():
    env = make(max_new_tokens=1)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(4)
    env.reset(seed=0)
    assert env.step(4)[2]
    with pytest.raises(RuntimeError, match="reset"):
        env.step(4)


def test_unknown_names_list_valid_ones():
    with pytest.raises(ValueError, match="reviews"):
        make(task="poems")
    with pytest.raises(ValueError, match="'learned', 'gold', 'ensemble'"):
        make(reward="human")
    with pytest.raises(ValueError, match="'box', 'dict'"):
        make(observation_mode="pixels")
    with pytest.raises(ValueError, match="'ansi', 'human', 'rgb_array'"):
        make(render_mode="pixels")
    with pytest.raises(ValueError, match="'train', 'eval', 'test'"):
        make(prompt_split="validation")
    with pytest.raises(ValueError, match="max_new_tokens"):
        make(max_new_tokens=0)
    with pytest.raises(ValueError, match="reward model's block_size"):
        make(reward="learned", max_new_tokens=500)  # at construction, not mid-episode


def test_bad_prompts_raise():
    env = make()
    too_long = "write a positive review of the pizza about the crust , short : " * 2
    with pytest.raises(ValueError, match="max_prompt_tokens"):
        env.reset(options={"prompt": too_long})
    with pytest.raises(ValueError, match="unknown word"):
        env.reset(options={"prompt": "write a review of the zeppelin"})
    with pytest.raises(ValueError, match="valid: 'prompt'"):
        env.reset(options={"prompts": ["x"]})
    for salad in ("the write a positive review of the pizza about the crust , short :",
                  "write a positive review of the pizza about the crust crust , short :",
                  "crust the pizza review positive write a about the , short :"):
        with pytest.raises(ValueError, match="not a reviews prompt"):
            env.reset(options={"prompt": salad})
    for special in ("<eos>", "<bos>", "<pad>"):
        with pytest.raises(ValueError, match="special tokens"):
            env.reset(options={"prompt": f"write a positive review of the pizza {special} :"})


def test_learned_reward_missing_files(tmp_path):
    shutil.copy(ASSETS / "tokenizer.json", tmp_path / "tokenizer.json")
    with pytest.raises(FileNotFoundError, match="reward.json"):
        TextGenEnv(reward="learned", assets_dir=tmp_path)


def test_reward_callable_shape_checked():
    env = make(reward=lambda p, r: [0.0, 1.0], max_new_tokens=1)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(4)


# ---- episodes ----------------------------------------------------------------------------
def test_same_seed_same_episode():
    actions = np.random.default_rng(0).integers(0, 100, 8)
    runs = [run_episode(make(max_new_tokens=8), actions, seed=7) for _ in range(2)]
    (o1, r1, i1), (o2, r2, i2) = runs
    assert all((a == b).all() for a, b in zip(o1, o2)) and r1 == r2 and i1 == i2
    prompts = {make().reset(seed=s)[1]["prompt"] for s in range(8)}
    assert len(prompts) > 1  # the seed does pick the prompt


def test_final_info_eos_and_length_limit():
    env = make(max_new_tokens=3)
    tok, task = env.tokenizer, env.task
    words = tok.encode("the crust")
    # EOS ends the episode early.
    _, rewards, info = run_episode(env, words + [tok.eos_id], seed=0)
    assert len(rewards) == 3 and FINAL_KEYS <= set(info)
    assert info["eos"] and info["length"] == 3 and info["response"] == "the crust <eos>"
    assert info["gold_score"] == pytest.approx(task.gold_score(info["prompt"], info["response"]))
    assert rewards == [0.0, 0.0, info["reward_model_score"]]
    # max_new_tokens ends it without EOS: terminated too, the response has no <eos>.
    _, rewards, info = run_episode(env, words * 3, seed=0)
    assert len(rewards) == 3 and not info["eos"] and info["length"] == 3
    assert not info["response"].endswith("<eos>")


def test_options_prompt_and_eval_split():
    prompt = "write a positive review of the pizza about the crust , short :"
    env = make(max_new_tokens=20)
    obs, info = env.reset(seed=3, options={"prompt": prompt})
    assert info["prompt"] == prompt
    best = env.task.best_response(prompt, np.random.default_rng(0))
    _, rewards, info = run_episode(env, env.tokenizer.encode(best), options={"prompt": prompt})
    assert info["prompt"] == prompt and info["response"] == best
    assert rewards[-1] == pytest.approx(1.0) == info["gold_score"]  # a perfect response
    for split in ("eval", "test"):
        env = make(prompt_split=split)
        assert all(env.reset(seed=s)[1]["prompt"] in env.task.prompts(split) for s in range(5))


def test_reward_callable_gets_text():
    seen = []

    def reward(prompts, responses):
        seen.append((prompts, responses))
        return torch.tensor([float(len(r.split())) for r in responses])

    env = make(reward=reward, max_new_tokens=4)
    _, rewards, info = run_episode(env, [4, 5, 6, 7], seed=0)
    assert seen == [([info["prompt"]], [info["response"]])]
    assert rewards[-1] == info["reward_model_score"] == 4.0


def test_learned_reward_loads_from_assets_dir(tmp_path):
    """reward="learned" loads assets_dir/reward.*."""
    from textenv.assets import load_reference

    for name in ("tokenizer.json", "sft.json", "sft.safetensors"):
        shutil.copy(ASSETS / name, tmp_path / name)
    env0 = make()
    rm = RewardModel.from_lm(load_reference(ASSETS), env0.tokenizer, seed=0)
    rm.gain, rm.bias = 3.0, 0.5
    rm.save(tmp_path, "reward")
    env = TextGenEnv(reward="learned", assets_dir=tmp_path, max_new_tokens=4)
    _, rewards, info = run_episode(env, [4, 5, 6, env.tokenizer.eos_id], seed=0)
    expected = float(rm.score([info["prompt"]], [info["response"]])[0])
    assert rewards[-1] == pytest.approx(expected, abs=1e-5) and expected != 0.0
    assert info["reward_model_score"] == rewards[-1]
    assert info["gold_score"] == env.task.gold_score(info["prompt"], info["response"])


def test_learned_reward_is_the_reward_model():
    env = TextGenEnv(assets_dir=ASSETS, max_new_tokens=6)  # reward="learned" is the default
    _, rewards, info = run_episode(env, [4, 5, 6, 7, 8, 9], seed=0)
    rm = RewardModel.load(ASSETS, "reward")
    expected = float(rm.score([info["prompt"]], [info["response"]])[0])
    assert rewards[-1] == pytest.approx(expected, abs=1e-5)
    assert info["reward_model_score"] == pytest.approx(expected, abs=1e-5)


def test_learned_reward_scores_token_ids_like_the_decoded_text():
    """The envs score finished episodes from token ids (no decode/encode round trip); the
    reward equals the reward model's score of the decoded text, also when a response holds
    pad or bos tokens (which decoding drops) and when it is cut at the length limit."""
    rm = RewardModel.load(ASSETS, "reward")
    tok = make().tokenizer
    words = tok.encode("the crust was crispy and the staff were friendly .")
    for actions in ([*words, tok.eos_id],
                    [words[0], tok.pad_id, words[1], tok.bos_id, *words[2:5], tok.eos_id],
                    [tok.pad_id, tok.bos_id, tok.pad_id],  # nothing left after decoding
                    words[:4]):  # cut at max_new_tokens, no eos
        env = TextGenEnv(assets_dir=ASSETS, max_new_tokens=len(actions))
        _, rewards, info = run_episode(env, actions, seed=3)
        expected = float(rm.score([info["prompt"]], [info["response"]])[0])
        assert rewards[-1] == pytest.approx(expected, abs=1e-5), actions


# ---- render ---------------------------------------------------------------------------------
def test_render(capsys):
    env = make(render_mode="ansi")
    _, info = env.reset(seed=0)
    assert env.render() == info["prompt"]
    env.step(env.tokenizer.encode("the")[0])
    assert env.render() == info["prompt"] + " the"

    env = make(render_mode="human")
    _, info = env.reset(seed=0)
    env.step(env.tokenizer.eos_id)
    out = capsys.readouterr().out
    assert info["prompt"] in out and "<eos>" in out


# ---- registration -----------------------------------------------------------------------------
def test_registration_in_fresh_interpreter():
    code = f"""
import sys
import gymnasium as gym
env = gym.make("textenv:TextGen-v0", reward="gold", assets_dir={str(ASSETS)!r})
obs, info = env.reset(seed=0)
assert type(env.unwrapped).__name__ == "TextGenEnv", env
spec = gym.registry["TextGen-v0"]
assert spec.entry_point == "textenv.env:TextGenEnv"
assert spec.vector_entry_point == "textenv.vector_env:TextGenVectorEnv"
import importlib, textenv
importlib.reload(textenv)  # registering again is a no-op, not an error
print("ok")
"""
    light = "import sys, textenv; assert 'torch' not in sys.modules; print('ok')"
    for src in (code, light):
        out = subprocess.run([sys.executable, "-W", "error::UserWarning", "-c", src],
                             capture_output=True, text=True, timeout=120)
        assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_gym_make_after_import():
    env = gym.make("TextGen-v0", reward="gold", assets_dir=ASSETS)
    assert isinstance(env.unwrapped, TextGenEnv)
    env.reset(seed=0)


def test_rgb_array_render_draws_the_text():
    env = TextGenEnv(reward="gold", render_mode="rgb_array", assets_dir=ASSETS)
    env.reset(seed=0)
    frame = env.render()
    assert frame.dtype == np.uint8 and frame.ndim == 3 and frame.shape[2] == 3
    assert (frame < 128).any() and (frame == 255).any()  # dark text on a white page
