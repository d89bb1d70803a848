"""The from-scratch task `sequences`, its gym id, the one-hot observation wrappers, and the
warning a plain MlpPolicy gets when it reads raw token ids."""

import importlib.util
import warnings
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import textenv
import textenv.env as env_module
from textenv.tasks import make_task
from textenv.tasks.sequences import OPS, SYMBOLS, SequencesTask, answer
from textenv.wrappers import OneHotObservation, VectorOneHotObservation

ENV_ID = "TextGen-Sequences-v0"
ROOT = Path(__file__).resolve().parent.parent


TASK = make_task("sequences")


@pytest.fixture
def task():
    return TASK


def make(**kw):
    return gym.make(ENV_ID, reward="gold", **kw)


# ---- the task --------------------------------------------------------------------------------
GOLD_SUITE = [  # (prompt, response, gold)
    ("reverse a c b :", "b c a <eos>", 1.0),
    ("copy a c b :", "a c b <eos>", 1.0),
    ("sort d a d :", "a d d <eos>", 1.0),
    ("copy h :", "h <eos>", 1.0),
    ("reverse a c b :", "b c a <eos> d d", 1.0),  # words after <eos> are ignored
    ("reverse a c b :", "b c d <eos>", 0.5 * 2 / 3),  # one wrong symbol
    ("reverse a c b :", "a c b <eos>", 0.5 / 3),  # copied instead of reversed
    ("sort c b a :", "c a b <eos>", 0.0),  # another order, no position right
    ("reverse a c b :", "b c a", 0.25),  # right, but cut off
    # degenerate: wrong length, empty, <eos> only, repetition, prompt words
    ("reverse a c b :", "b c a a <eos>", 0.15),
    ("reverse a c b :", "b c <eos>", 0.5 * 2 / 3 * 0.3),
    ("reverse a c b :", "", 0.0),
    ("reverse a c b :", "<eos>", 0.0),
    ("reverse a c b :", "b b b b b", 0.5 / 3 * 0.3 ** 2 * 0.5),
    ("reverse a c b :", "reverse a c b : <eos>", 0.0),  # the prompt again
    ("copy e :", "e e e e <eos>", 0.5 * 0.3 ** 3),
]


@pytest.mark.parametrize("prompt,response,gold", GOLD_SUITE)
def test_gold_on_hand_written_answers(task, prompt, response, gold):
    assert task.gold_score(prompt, response) == pytest.approx(gold)


def test_degenerate_answers_score_low(task):
    for prompt in ["reverse a c b :", "sort d a d :", "copy e f :"]:
        right = answer(*task.parse_prompt(prompt))
        for bad in ["", "<eos>", " ".join([*right, right[0], "<eos>"]),
                    " ".join([*right[:-1], "<eos>"]), " ".join([right[0]] * 5)]:
            assert task.gold_score(prompt, bad) <= 0.15, (prompt, bad)


def test_best_response_is_perfect_and_demonstrations_are_not(task):
    rng = np.random.default_rng(0)
    prompts = [task.sample_prompt(rng) for _ in range(400)]
    assert all(task.gold_score(p, task.best_response(p, rng)) == 1.0 for p in prompts)
    demo_gold = [task.gold_score(p, task.demonstration(p, rng)) for p in prompts]
    assert 0.4 < np.mean(demo_gold) < 0.8  # imperfect, like real labelers
    assert all(task.demonstration(p, rng).endswith(" <eos>") for p in prompts)


def test_the_answers():
    cca = ("c", "c", "a")
    for op, seq, right in [("copy", cca, "c c a"), ("reverse", cca, "a c c"),
                           ("sort", cca, "a c c"), ("sort", ("b",), "b")]:
        assert " ".join(answer(op, seq)) == right
        assert TASK.best_response(TASK.format(op, seq), None) == right + " <eos>"


def test_splits_are_disjoint_and_test_sequences_are_never_trained_on(task):
    train, evals, test = (set(task.prompts(s)) for s in ("train", "eval", "test"))
    assert train and evals and test
    assert not (train & evals or train & test or evals & test)
    n_prompts = len(OPS) * sum(len(SYMBOLS) ** n for n in range(1, task.max_length + 1))
    assert len(train | evals | test) == n_prompts
    seq = lambda prompt: tuple(task.parse_prompt(prompt)[1])
    test_seqs = {seq(p) for p in test}
    assert not test_seqs & {seq(p) for p in train | evals}
    # eval: an instruction held out, on a sequence seen in training
    assert {seq(p) for p in evals} <= {seq(p) for p in train}
    # no training stage sees a test sequence: not the corpus either
    rng = np.random.default_rng(0)
    for doc in task.corpus(2000, rng):
        words = doc.split()
        symbols = tuple(words[1:words.index(":")]) if ":" in words else tuple(words[:-1])
        assert symbols not in test_seqs, doc


def test_the_splits_are_the_same_on_every_machine(task):
    assert make_task("sequences").prompts("test") == task.prompts("test")
    assert task.prompts("test")[:3] == ["copy a :", "reverse a :", "sort a :"]


@pytest.mark.parametrize("bad", [
    "reverse a c b", "reverse a c b : ", " reverse a c b :", "reverse  a c b :",
    "reverse :", "flip a b :", "reverse a x :", "reverse a b c d :", "reverse a : b :",
    "a b c :", "", "reverse a c b : b c a", "Reverse a :", 3,
])
def test_prompt_parser_is_strict(task, bad):
    with pytest.raises(ValueError, match="not a sequences prompt"):
        task.parse_prompt(bad)


def test_difficulty_is_a_constructor_argument():
    easy = SequencesTask(max_length=1)
    assert easy.max_prompt_tokens == 3 and easy.max_response_tokens == 3
    assert len(easy.prompts("train") + easy.prompts("eval") + easy.prompts("test")) == 24
    with pytest.raises(ValueError, match="not a sequences prompt"):
        easy.parse_prompt("copy a b :")
    with pytest.raises(ValueError, match="max_length"):
        SequencesTask(max_length=0)


@settings(max_examples=300, deadline=None)
@given(op=st.sampled_from(OPS), seq=st.lists(st.sampled_from(SYMBOLS), min_size=1, max_size=3),
       words=st.lists(st.sampled_from([*SYMBOLS, *OPS, ":", "<eos>"]), max_size=8))
def test_fuzz_gold_is_exact_or_at_most_half(op, seq, words):
    task = TASK
    prompt, response = task.format(op, tuple(seq)), " ".join(words)
    gold = task.gold_score(prompt, response)
    before_eos = words[:words.index("<eos>")] if "<eos>" in words else None
    if before_eos is not None and tuple(before_eos) == answer(op, tuple(seq)):
        assert gold == 1.0
    else:
        assert 0.0 <= gold <= 0.5
        said = before_eos if before_eos is not None else words
        if len(said) != len(seq):
            assert gold <= 0.15


# ---- the env -----------------------------------------------------------------------------------
def test_the_id_makes_the_task_with_its_own_assets():
    assert textenv.TASK_IDS["sequences"] == ENV_ID
    env = make()
    assert env.unwrapped.task.name == "sequences"
    assert env.action_space.n == 16  # 4 special tokens, 8 symbols, 3 operations, ":"
    assert env.observation_space.shape == (1 + 5 + 5,)


def test_the_shipped_reward_model_scores_sequences():
    env = gym.make(ENV_ID)  # reward="learned": textenv/assets/sequences/reward.*
    envs = gym.make_vec(ENV_ID, num_envs=4)
    obs, info = env.reset(seed=0, options={"prompt": "reverse a c b :"})
    for token in ["b", "c", "a", "<eos>"]:
        obs, reward, done, _, info = env.step(env.unwrapped.tokenizer.encode(token)[0])
    assert done and np.isfinite(reward) and info["gold_score"] == 1.0
    envs.reset(seed=0)
    for _ in range(env.unwrapped.task.max_response_tokens):
        _, rewards, *_ = envs.step(np.full(4, 7))
        assert np.isfinite(rewards).all()


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
@pytest.mark.parametrize("wrapped", [False, True])
def test_env_checkers(wrapped):
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = OneHotObservation(make()) if wrapped else make()
    gym_check_env(env if wrapped else env.unwrapped)
    sb3_check_env(env)


@pytest.mark.parametrize("split", ["train", "eval", "test"])
def test_fuzz_random_episodes(split):
    env = OneHotObservation(make(prompt_split=split))
    task, rng = env.unwrapped.task, np.random.default_rng(0)
    seen = set()
    for episode in range(150):
        obs, info = env.reset(seed=episode)
        assert info["prompt"] in task.prompts(split)
        seen.add(info["prompt"])
        done, steps = False, 0
        while not done:
            assert env.observation_space.contains(obs)
            obs, reward, done, truncated, info = env.step(int(rng.integers(env.action_space.n)))
            steps += 1
        assert steps <= task.max_response_tokens and not truncated
        assert reward == info["gold_score"] == task.gold_score(info["prompt"], info["response"])
    assert len(seen) > 100


# ---- the one-hot observation wrappers ------------------------------------------------------------
def test_one_hot_observation_space_and_contents():
    raw = make()
    env = OneHotObservation(make())
    L, V = raw.observation_space.shape[0], raw.action_space.n
    assert env.observation_space == gym.spaces.Box(0.0, 1.0, (L * V,), np.float32)
    ids, _ = raw.reset(seed=3)
    obs, _ = env.reset(seed=3)
    rows = obs.reshape(L, V)
    assert (rows.sum(1) == 1).all() and (rows.argmax(1) == ids).all()
    ids, *_ = raw.step(7)
    obs, *_ = env.step(7)
    assert (obs.reshape(L, V).argmax(1) == ids).all()
    square = OneHotObservation(make(), flatten=False)
    assert square.observation_space.shape == (L, V)
    assert square.reset(seed=3)[0].shape == (L, V)


def test_vector_one_hot_matches_the_single_wrapper():
    envs = VectorOneHotObservation(gym.make_vec(ENV_ID, num_envs=3, reward="gold"))
    singles = [OneHotObservation(make()) for _ in range(3)]
    obs, _ = envs.reset(seed=10)
    assert envs.single_observation_space == singles[0].observation_space
    assert obs.shape == envs.observation_space.shape and obs.dtype == np.float32
    for i, env in enumerate(singles):
        assert (env.reset(seed=10 + i)[0] == obs[i]).all()
    obs, *_ = envs.step(np.array([7, 8, 2]))
    for i, (env, a) in enumerate(zip(singles, [7, 8, 2])):
        assert (env.step(a)[0] == obs[i]).all()


def test_one_hot_needs_the_box_observation():
    with pytest.raises(TypeError, match="observation_mode='box'"):
        OneHotObservation(make(observation_mode="dict"))


# ---- the warning for a plain MlpPolicy on raw ids ------------------------------------------------
def warnings_of(fn) -> list[str]:
    env_module._raw_ids_warned = False  # the warning is once per process
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        fn()
    return [str(w.message) for w in caught if "raw token ids" in str(w.message)]


def tiny_ppo(env, **kw):
    from stable_baselines3 import PPO

    return PPO("MlpPolicy", env, n_steps=32, batch_size=32, n_epochs=1, **kw)


def test_mlp_policy_on_raw_ids_warns_once():
    found = warnings_of(lambda: tiny_ppo(make()).learn(100))
    assert len(found) == 1 and "OneHotObservation" in found[0]


def test_no_warning_with_one_hot_lm_extractor_or_checker():
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    from agents.sb3 import lm_policy_kwargs

    assert warnings_of(lambda: tiny_ppo(OneHotObservation(make())).learn(100)) == []
    kwargs = lm_policy_kwargs(pretrained=False)
    assert warnings_of(lambda: tiny_ppo(make(), policy_kwargs=kwargs).learn(64)) == []
    assert warnings_of(lambda: sb3_check_env(make())) == []
    env = make()
    assert warnings_of(lambda: [env.reset(seed=0), env.step(2)]) == []


# ---- from scratch: SB3 learns the task -----------------------------------------------------------
@pytest.mark.slow
def test_sb3_mlp_policy_learns_from_a_random_policy(tmp_path):
    spec = importlib.util.spec_from_file_location("sb3_from_scratch",
                                                  ROOT / "examples" / "sb3_from_scratch.py")
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    cfg = example.Config(seeds=(0,), total_env_steps=40_000, out=str(tmp_path / "r.json"))
    (run,) = example.main(cfg)
    before, after = run["before"]["eval/sampled/gold"], run["after"]["eval/sampled/gold"]
    assert before < 0.05 and after > before + 0.1

