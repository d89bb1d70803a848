"""The `arithmetic` task: gold scorer, strict prompt parser, splits, demonstrations, corpus,
and the env on its shipped assets (checkers, random actions, the learned reward)."""

from collections import Counter

import gymnasium as gym
import numpy as np
import pytest

import textenv
from textenv.assets import read_quality, task_assets_dir
from textenv.tasks import TASKS, make_task
from textenv.tasks.arithmetic import (
    DIGITS,
    EOS_WORD,
    MISTAKES,
    PHRASINGS,
    ArithmeticTask,
    DemoNoise,
    Problem,
    digits,
    mistake,
)
from textenv.tokenizer import WordTokenizer

OP_WORDS = {"plus": "add", "+": "add", "sum": "add", "minus": "subtract", "-": "subtract",
            "difference": "subtract", "times": "multiply", "*": "multiply", "product": "multiply"}
ADD = "what is 3 7 plus 4 8 :"  # 85
SUB = "subtract 1 7 from 5 2 :"  # 35
MUL = "compute 1 2 * 1 2 :"  # 144


@pytest.fixture(scope="module")
def task():
    return ArithmeticTask()


# ---- the gold scorer -------------------------------------------------------------------------
@pytest.mark.parametrize("prompt, response", [
    (ADD, "8 5 <eos>"), (SUB, "3 5 <eos>"), (MUL, "1 4 4 <eos>"),
    ("add 0 and 0 :", "0 <eos>"), ("what is 9 9 plus 9 9 :", "1 9 8 <eos>"),
    ("what is the difference of 7 and 7 :", "0 <eos>"), ("multiply 0 by 1 2 :", "0 <eos>"),
    (ADD, "8 5 <eos> 1 2"),  # words after <eos> are ignored
    (ADD, "  8   5  <eos> "),  # whitespace does not matter
])
def test_right_answers_score_one(task, prompt, response):
    assert task.gold_score(prompt, response) == 1.0


def test_right_digits_without_eos_score_half(task):
    assert task.gold_score(ADD, "8 5") == 0.5
    assert task.gold_components(ADD, "8 5") == {"format": 1.0, "value": 1.0, "eos": 0.5}


@pytest.mark.parametrize("response, expected", [
    ("8 4 <eos>", 0.1),  # one of two digits right, in place
    ("7 5 <eos>", 0.1),  # a forgotten carry: the units right
    ("1 8 5 <eos>", 0.0),  # a digit too many
    ("5 8 <eos>", 0.0),  # swapped: no digit in its place
    ("5 <eos>", 0.0),  # a digit too few
    ("8 4", 0.05),  # a near miss, cut off
])
def test_wrong_numbers_get_at_most_a_little_credit(task, response, expected):
    assert task.gold_score(ADD, response) == pytest.approx(expected)
    assert task.gold_score(MUL, "1 4 3 <eos>") == pytest.approx(0.2 * 2 / 3)


@pytest.mark.parametrize("response", [
    "", "<eos>", "<eos> 8 5",  # nothing before <eos>
    "8 5 3 <eos>", "8 5 . <eos>", "8 5 : <eos>", "8 5 8 5 <eos>",  # extra tokens after it
    "0 8 5 <eos>", "0 0 <eos>",  # leading zeros
    "8 plus 5 <eos>", "is 8 5 <eos>", "the sum <eos>", ". <eos>", "+ <eos>",  # words
    "8 5 is 8 5 <eos>", "eighty five <eos>", "8 5 5 5 5 5",
])
def test_degenerate_answers_score_zero(task, response):
    assert task.gold_score(ADD, response) == 0.0


def test_gold_in_unit_interval_and_at_most_02_unless_right(task):
    rng = np.random.default_rng(0)
    vocab = task.vocabulary() + [EOS_WORD]
    for _ in range(500):
        prompt = task.sample_prompt(rng)
        response = " ".join(rng.choice(vocab, size=int(rng.integers(0, 7))))
        score = task.gold_score(prompt, response)
        assert 0.0 <= score <= 1.0
        number, _, _ = task.read_answer(response)
        if number != task.parse_prompt(prompt).answer:
            assert score <= 0.2


def test_best_response_scores_one_everywhere(task):
    rng = np.random.default_rng(0)
    for split in ("eval", "test"):
        assert all(task.gold_score(p, task.best_response(p, rng)) == 1.0
                   for p in task.prompts(split))


# ---- the prompt parser -----------------------------------------------------------------------
def test_parse_prompt_reads_every_phrasing():
    assert ArithmeticTask.parse_prompt(ADD) == Problem("add", 37, 48)
    assert ArithmeticTask.parse_prompt(SUB) == Problem("subtract", 52, 17)  # B from A
    assert ArithmeticTask.parse_prompt("what is 5 2 minus 1 7 :") == Problem("subtract", 52, 17)
    assert ArithmeticTask.parse_prompt(MUL) == Problem("multiply", 12, 12)
    for op, templates in PHRASINGS.items():
        p = Problem(op, 12, 7)
        for t in templates:
            prompt = t.replace("A", digits(p.a)).replace("B", digits(p.b))
            assert ArithmeticTask.parse_prompt(prompt) == p
            assert ArithmeticTask.parse_prompt(prompt).answer == {"add": 19, "subtract": 5,
                                                                  "multiply": 84}[op]


@pytest.mark.parametrize("prompt, match", [
    ("what is 37 plus 48 :", "not an arithmetic prompt"),  # numbers are digit tokens
    ("add 0 7 and 1 :", "not an arithmetic prompt"),  # leading zero
    ("add 1 2 3 and 4 :", "not an arithmetic prompt"),  # three digits
    ("what is 3 plus 4", "not an arithmetic prompt"),  # no colon
    ("what is 3 plus 4 : 7", "not an arithmetic prompt"),  # an answer attached
    ("please add 3 and 4 :", "not an arithmetic prompt"),  # not one of the phrasings
    ("compute 3 x 4 :", "not an arithmetic prompt"),
    ("write a positive review of the pizza about the crust , short :", "not an arithmetic"),
    ("", "not an arithmetic prompt"),
    ("subtract 9 from 5 :", "non-negative"),  # 5 - 9
    ("what is 1 minus 2 :", "non-negative"),
    ("multiply 1 3 by 2 :", "operands must be 0..12"),
])
def test_parse_prompt_is_strict(prompt, match):
    with pytest.raises(ValueError, match=match):
        ArithmeticTask.parse_prompt(prompt)


def test_a_bad_prompt_is_refused_at_reset():
    env = gym.make("TextGen-Arithmetic-v0", reward="gold")
    with pytest.raises(ValueError, match="not valid for task 'arithmetic'"):
        env.reset(seed=0, options={"prompt": "what is 3 plus 4"})


# ---- splits ----------------------------------------------------------------------------------
def test_splits_are_disjoint_and_test_problems_are_never_trained_on(task):
    train, eval_, test = (task.prompts(s) for s in ("train", "eval", "test"))
    assert len(train) > 50000 and 100 <= len(eval_) <= 300 and 100 <= len(test) <= 300
    assert not (set(train) & set(eval_) or set(train) & set(test) or set(eval_) & set(test))

    def keys(prompts):
        return {task.parse_prompt(p).key for p in prompts}

    def problems(prompts):
        return {task.parse_prompt(p) for p in prompts}

    assert problems(eval_) <= problems(train)  # eval: a held-out phrasing of a trained problem
    assert not keys(test) & (keys(train) | keys(eval_))  # nor b + a for a + b
    assert keys(test) == set(task.test_keys)
    for split in (eval_, test):  # every operation and level in every split
        assert {(task.parse_prompt(p).op, task.parse_prompt(p).level) for p in split} == {
            (op, level) for op in PHRASINGS for level in (1, 2)}
    rng = np.random.default_rng(0)
    assert {task.sample_prompt(rng, "test") for _ in range(300)} <= set(test)
    with pytest.raises(ValueError, match="'train', 'eval', 'test'"):
        task.prompts("validation")
    with pytest.raises(ValueError, match="'train', 'eval', 'test'"):
        task.sample_prompt(rng, "validation")


def test_sampling_balances_operations_and_levels(task):
    rng = np.random.default_rng(0)
    counts = Counter((task.parse_prompt(p).op, task.parse_prompt(p).level)
                     for p in (task.sample_prompt(rng) for _ in range(6000)))
    assert len(counts) == 6 and min(counts.values()) > 850  # about 1000 each


def test_deterministic(task):
    def run(seed):
        rng = np.random.default_rng(seed)
        prompts = [task.sample_prompt(rng) for _ in range(50)]
        return prompts, [task.demonstration(p, rng) for p in prompts], task.corpus(5, rng)

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert task.prompts("test") == ArithmeticTask().prompts("test")


# ---- demonstrations, corpus, vocabulary ------------------------------------------------------
def test_demonstrations_have_the_documented_error_rate(task):
    rng = np.random.default_rng(0)
    prompts = [task.sample_prompt(rng) for _ in range(4000)]
    demos = [task.demonstration(p, rng) for p in prompts]
    gold = np.array([task.gold_score(p, d) for p, d in zip(prompts, demos)])
    noise = DemoNoise()
    rate = noise.carry + noise.off_by_one + noise.swapped + noise.wrong_operation
    assert rate == pytest.approx(0.30)
    assert (gold < 1.0).mean() == pytest.approx(rate, abs=0.025)
    assert all(d.endswith(f" {EOS_WORD}") and task.read_answer(d)[0] is not None
               for d in demos)  # every demo a well-formed number, terminated
    assert (ArithmeticTask(DemoNoise(0, 0, 0, 0)).demonstration(ADD, rng) == "8 5 <eos>")


@pytest.mark.parametrize("problem, kind, expected", [
    (Problem("add", 37, 48), "carry", {75}),  # the carry forgotten
    (Problem("add", 99, 99), "carry", {88}),
    (Problem("add", 12, 34), "carry", {56}),  # no carry: a spurious one
    (Problem("subtract", 52, 17), "carry", {45}),  # smaller digit from the larger
    (Problem("multiply", 7, 8), "carry", {46, 66}),  # the tens slip
    (Problem("add", 37, 48), "swapped", {58}),
    (Problem("add", 37, 48), "off_by_one", {75, 95, 84, 86}),
    (Problem("subtract", 52, 47), "wrong_operation", {99}),  # 52 * 47 has four digits
])
def test_each_kind_of_mistake(problem, kind, expected):
    rng = np.random.default_rng(0)
    for _ in range(20):
        assert mistake(problem, kind, rng) in expected


def test_mistakes_are_always_wrong_and_well_formed(task):
    rng = np.random.default_rng(1)
    for _ in range(2000):
        p = task.parse_prompt(task.sample_prompt(rng))
        wrong = mistake(p, MISTAKES[int(rng.integers(len(MISTAKES)))], rng)
        assert wrong != p.answer and 0 <= wrong < 1000
    with pytest.raises(ValueError, match="unknown mistake"):
        mistake(Problem("add", 1, 2), "typo", rng)


def test_corpus_covers_the_vocabulary_and_never_states_a_test_problem(task):
    rng = np.random.default_rng(0)
    docs = task.corpus(2000, rng)
    tok = WordTokenizer(task.vocabulary())
    seen = Counter(w for d in docs for w in d.split())
    assert set(task.vocabulary()) <= set(seen)  # every word is pretrained on
    assert all(d.endswith(EOS_WORD) and len(tok.encode(d)) < 48 for d in docs)
    prompt_docs = [d for d in docs if ":" in d.split()]
    assert 0.15 < len(prompt_docs) / len(docs) < 0.35
    stated = []  # (operation, a, b) of every statement and every prompt
    for d in docs:
        if d in prompt_docs:
            p = task.parse_prompt(d[:d.index(":") + 1])
            stated.append(p.key)
            continue
        for sentence in d.removesuffix(EOS_WORD).split(" . "):
            words = sentence.split()
            if not words:
                continue
            op = next(OP_WORDS[w] for w in words if w in OP_WORDS)
            runs = " ".join(w if w in DIGITS else "|" for w in words).split("|")
            a, b = [int(r.replace(" ", "")) for r in runs if r.strip()][:2]  # then C
            stated.append(Problem(op, a, b).key)
    assert len(stated) > 3000
    assert not set(stated) & set(task.test_keys)


def test_everything_fits_the_length_limits_and_the_vocabulary(task):
    tok = WordTokenizer(task.vocabulary())
    rng = np.random.default_rng(0)
    longest = max(len(p.split()) for s in ("train", "eval", "test") for p in task.prompts(s))
    assert longest == task.max_prompt_tokens
    for p in task.prompts("eval") + task.prompts("test") + task.prompts("train")[::97]:
        tok.encode(p)
        assert len(tok.encode(task.best_response(p, rng))) <= 4 <= task.max_response_tokens
        assert len(tok.encode(task.demonstration(p, rng))) <= task.max_response_tokens
    assert len(task.vocabulary()) < 40


# ---- registration, assets and the env --------------------------------------------------------
def test_registered_with_an_id_of_its_own():
    assert TASKS["arithmetic"] is ArithmeticTask
    assert isinstance(make_task("arithmetic"), ArithmeticTask)
    assert textenv.TASK_IDS["arithmetic"] == "TextGen-Arithmetic-v0"
    assert gym.spec("TextGen-Arithmetic-v0").kwargs["task"] == "arithmetic"


def test_shipped_quality():
    q = read_quality(task_assets_dir("arithmetic"))
    assert 0.2 <= q["sft_gold_mean"] <= 0.6  # headroom for RL
    assert q["rm_pairwise_accuracy_gold"] > 0.6
    assert not any(k.startswith("rm_degenerate") for k in q)  # no degenerate suite here


def test_env_checkers():
    from gymnasium.utils.env_checker import check_env as gym_check_env
    from stable_baselines3.common.env_checker import check_env as sb3_check_env

    env = gym.make("TextGen-Arithmetic-v0", reward="gold")
    gym_check_env(env.unwrapped)
    sb3_check_env(env)


def test_random_actions_fuzz():
    env = gym.make("TextGen-Arithmetic-v0", reward="gold")
    rng = np.random.default_rng(0)
    eos = env.unwrapped.tokenizer.eos_id
    episodes = 0
    obs, info = env.reset(seed=0)
    for _ in range(600):
        action = eos if rng.random() < 0.2 else int(rng.integers(env.action_space.n))
        obs, reward, terminated, truncated, info = env.step(action)
        assert env.observation_space.contains(obs)
        assert 0.0 <= reward <= 1.0
        if terminated or truncated:
            assert reward == info["gold_score"]
            assert info["length"] <= env.unwrapped.task.max_response_tokens
            episodes += 1
            obs, info = env.reset()
    assert episodes > 100


def test_vector_env_with_the_learned_reward():
    envs = gym.make_vec("TextGen-v0", num_envs=8, task="arithmetic", reward="learned")
    tok = envs.unwrapped.tokenizer
    task = envs.unwrapped.task
    obs, info = envs.reset(seed=0)
    prompts = list(info["prompt"])
    right = [tok.encode(task.best_response(p, None)) for p in prompts]  # digits + <eos>
    finished = {}
    for t in range(4):
        actions = np.array([r[t] if t < len(r) else tok.eos_id for r in right])
        obs, reward, terminated, truncated, info = envs.step(actions)
        assert np.isfinite(reward).all()
        for i in np.flatnonzero(terminated):
            if i not in finished:
                finished[i] = (reward[i], info["gold_score"][i], info["reward_model_score"][i])
    assert len(finished) == 8
    assert all(gold == 1.0 and r == pytest.approx(rm) for r, gold, rm in finished.values())
    envs.close()


def test_build_defaults_are_the_tasks_own():
    from agents.cli import main
    from reward_models.pipeline import BuildConfig

    cfg = BuildConfig.for_task("arithmetic")
    assert cfg.task == "arithmetic" and cfg.rm.train.epochs == 8
    assert BuildConfig.for_task("reviews") == BuildConfig()
    with pytest.raises(SystemExit) as e:
        main(["build-assets", "--task", "arithmetic", "--help"])
    assert e.value.code == 0


@pytest.mark.parametrize("algo", ["ppo", *(pytest.param(a, marks=pytest.mark.slow)
                                           for a in ("grpo", "rloo", "reinforce"))])
def test_agents_train_on_arithmetic(algo, tmp_path):
    from dataclasses import replace

    from agents import ALGORITHMS

    cls, train = ALGORITHMS[algo]
    cfg = replace(cls(), task="arithmetic", run_dir=str(tmp_path / algo), num_envs=8,
                  max_new_tokens=6, eval_samples=1, eval_every=0, threads=1, progress=False,
                  tensorboard=False, total_env_steps=2 * 8 * 6)
    final = train(cfg)["final"]
    assert 0.0 <= final["eval/gold_mean"] <= 1.0 and 0.0 <= final["test/gold_mean"] <= 1.0
    assert np.isfinite(final["eval/reward_mean"]) and np.isfinite(final["eval/kl"])
