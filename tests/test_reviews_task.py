"""The `reviews` task: grammar, gold scorer, splits, determinism."""

import numpy as np
import pytest

from textenv.tasks import ReviewsTask, make_task
from textenv.tasks.reviews import EOS_WORD, TOPICS
from textenv.tokenizer import WordTokenizer

PROMPT = "write a positive review of the pizza about the crust , medium :"
GOOD = "the crust was crispy . i loved the toppings . <eos>"


@pytest.fixture(scope="module")
def task():
    return ReviewsTask()


def test_on_instruction_grammatical_response_scores_high(task):
    assert task.gold_score(PROMPT, GOOD) >= 0.95


@pytest.mark.parametrize("bad", [
    "the crust was crispy . i loved the rice . <eos>",  # off topic (sushi aspect)
    "the crust was crispy . i hated the toppings . <eos>",  # wrong sentiment in one sentence
    "the crust was crispy . <eos>",  # too short
    "the crust was crispy . i loved the toppings . the sauce was fresh . <eos>",  # too long
    "the crust was crispy . the crust was crispy . <eos>",  # repetitive
    "the crust was crispy . i loved the toppings .",  # no EOS
    "the crust were crispy . i loved the toppings . <eos>",  # number agreement
    "the crust was friendly . i loved the toppings . <eos>",  # adjective of the wrong class
    "the sauce was crispy . i loved the toppings . <eos>",  # never mentions the crust
    "the crust was crispy . i loved the <eos>",  # unfinished sentence
])
def test_each_kind_of_mistake_scores_strictly_lower(task, bad):
    assert task.gold_score(PROMPT, bad) < task.gold_score(PROMPT, GOOD)


def test_gold_score_in_unit_interval_on_random_text(task):
    rng = np.random.default_rng(0)
    vocab = task.vocabulary() + [EOS_WORD]
    for _ in range(300):
        prompt = task.sample_prompt(rng)
        response = " ".join(rng.choice(vocab, size=int(rng.integers(0, 30))))
        assert 0.0 <= task.gold_score(prompt, response) <= 1.0


def test_best_response_scores_at_least_09_on_every_eval_prompt(task):
    rng = np.random.default_rng(0)
    scores = [task.gold_score(p, task.best_response(p, rng))
              for p in task.prompts("eval") + task.prompts("test")]
    assert min(scores) >= 0.9


def test_demonstrations_are_imperfect_but_useful(task):
    rng = np.random.default_rng(0)
    prompts = [task.sample_prompt(rng) for _ in range(500)]
    gold = np.array([task.gold_score(p, task.demonstration(p, rng)) for p in prompts])
    assert 0.3 < gold.mean() < 0.8  # room for RL above the demonstrators
    assert (gold == 1.0).mean() > 0.1  # but some demos are perfect


def test_splits_are_disjoint_and_test_instructions_are_never_trained_on(task):
    """train / eval / test share no prompt; every eval prompt's instruction is trained on
    (with another phrasing); no test instruction appears in train or eval."""
    train, eval_, test = (task.prompts(s) for s in ("train", "eval", "test"))
    assert train and eval_ and test
    assert not (set(train) & set(eval_) or set(train) & set(test) or set(eval_) & set(test))

    def instructions(prompts):
        return {task.parse_prompt(p) for p in prompts}

    assert instructions(eval_) <= instructions(train)
    assert not instructions(test) & (instructions(train) | instructions(eval_))
    rng = np.random.default_rng(0)
    assert {task.sample_prompt(rng, "test") for _ in range(300)} <= set(test)
    with pytest.raises(ValueError, match="'train', 'eval', 'test'"):
        task.prompts("validation")


def test_deterministic_under_a_seed(task):
    def run(seed):
        rng = np.random.default_rng(seed)
        prompts = [task.sample_prompt(rng) for _ in range(20)]
        return prompts, [task.demonstration(p, rng) for p in prompts], task.corpus(5, rng)

    assert run(3) == run(3)
    assert run(3) != run(4)
    assert task.prompts("eval") == type(task)().prompts("eval")


def test_everything_the_task_writes_is_in_its_vocabulary(task):
    tok = WordTokenizer(task.vocabulary())
    rng = np.random.default_rng(0)
    for p in task.prompts("train")[:50] + task.prompts("test")[:50]:
        tok.encode(p)
        tok.encode(task.demonstration(p, rng))
        tok.encode(task.best_response(p, rng))
    for doc in task.corpus(100, rng):
        tok.encode(doc)
    longest = max(len(p.split()) for s in ("train", "eval", "test") for p in task.prompts(s))
    assert longest <= task.max_prompt_tokens


def test_parse_prompt_round_trip_and_errors(task):
    ins = task.parse_prompt(PROMPT)
    assert (ins.sentiment, ins.topic, ins.aspect, ins.length) == (
        "positive", "pizza", "crust", "medium")
    with pytest.raises(ValueError, match="not a reviews prompt"):
        task.parse_prompt("write a poem")
    assert len(TOPICS) == 8


def test_unknown_task_lists_valid_names():
    with pytest.raises(ValueError, match="valid tasks: .*reviews"):
        make_task("poems")
