"""The `reviews` gold scorer v2 against degenerate text.

Hand-written suites: degenerate responses of every kind a reward model was seen to reward
(paraphrase repetition, a missing aspect, generic answers, word salad, scrambled word order,
off-topic sentences, wrong sentiment, empty, only `<eos>`, rambling, a sentence repeated,
positive-word salad on a negative prompt) each score gold <= 0.2; responses that follow the
instruction (topic, aspect, sentiment, length, grammar, `<eos>`, varied wording) each score
>= 0.9. Then `reward_models.degenerate`, which writes such responses programmatically.
"""

import time
from collections import Counter

import numpy as np
import pytest

from reward_models.degenerate import KINDS, degenerate_suite, fraction_above
from textenv.tasks import make_task
from textenv.tasks.reviews import EOS_WORD
from textenv.tokenizer import WordTokenizer

PIZZA_CRUST = "write a positive review of the pizza about the crust , short :"
PIZZA_CHEESE = "give me a positive review of the pizza about the cheese , long :"
MOVIE_PLOT = "give me a positive review of the movie about the plot , medium :"
BURGER_FRIES = "please write a negative review of the burger about the fries , long :"
HOTEL_VIEW = "give me a negative review of the hotel about the view , medium :"
PHONE_CAMERA = "write a negative review of the phone about the camera , short :"
LAPTOP_DISPLAY = "please write a negative review of the laptop about the display , long :"
COFFEE_BARISTA = "write a positive review of the coffee about the barista , long :"
PROMPTS = [PIZZA_CRUST, PIZZA_CHEESE, MOVIE_PLOT, BURGER_FRIES, HOTEL_VIEW, PHONE_CAMERA,
           LAPTOP_DISPLAY, COFFEE_BARISTA]

GOOD = [
    (PIZZA_CRUST, "the crust was crispy . <eos>"),
    (PIZZA_CRUST, "i loved the crust . <eos>"),
    (PIZZA_CRUST, "the crust was really delicious . <eos>"),
    (PIZZA_CRUST, "the crust was fresh and the sauce was tasty . <eos>"),
    (PIZZA_CRUST, "the cheese was great and the crust was perfect . <eos>"),
    (PIZZA_CHEESE, "the cheese was delicious . the waiter was friendly . "
                   "i would recommend this pizza . <eos>"),
    (PIZZA_CHEESE, "i enjoyed the cheese . the crust was very crispy . "
                   "overall the pizza was excellent . <eos>"),
    (PIZZA_CHEESE, "the sauce was fresh and the cheese was tasty . the toppings were lovely . "
                   "i liked the waiter . <eos>"),
    (PIZZA_CHEESE, "overall the pizza was great . the cheese was truly fresh . "
                   "the waiter was quite polite . <eos>"),
    (PIZZA_CHEESE, "the toppings were crispy . i loved the cheese . "
                   "i would recommend this pizza . <eos>"),
    (MOVIE_PLOT, "the plot was gripping . the actors were funny . <eos>"),
    (MOVIE_PLOT, "i loved the plot . overall the movie was excellent . <eos>"),
    (MOVIE_PLOT, "the plot was really clever . i would recommend this movie . <eos>"),
    (MOVIE_PLOT, "the music was moving and the plot was clever . the jokes were funny . <eos>"),
    (MOVIE_PLOT, "i enjoyed the ending . the plot was truly gripping . <eos>"),
    (BURGER_FRIES, "the fries were soggy . the patty was bland . "
                   "i would not recommend this burger . <eos>"),
    (BURGER_FRIES, "i hated the fries . the bun was very stale . the cashier was rude . <eos>"),
    (BURGER_FRIES, "the fries were greasy and the pickles were soggy . the patty was stale . "
                   "overall the burger was awful . <eos>"),
    (BURGER_FRIES, "overall the burger was terrible . i disliked the fries . "
                   "the cashier was quite slow . <eos>"),
    (BURGER_FRIES, "the bun was bland . the fries were really greasy . "
                   "i regretted the patty . <eos>"),
    (HOTEL_VIEW, "the view was shabby . the staff were rude . <eos>"),
    (HOTEL_VIEW, "i disliked the view . i would not recommend this hotel . <eos>"),
    (HOTEL_VIEW, "the room was cramped and the view was poor . "
                 "overall the hotel was horrible . <eos>"),
    (HOTEL_VIEW, "the view was really awful . the bed was shabby . <eos>"),
    (HOTEL_VIEW, "the breakfast was stale . i regretted the view . <eos>"),
    (PHONE_CAMERA, "the camera was laggy . <eos>"),
    (PHONE_CAMERA, "i hated the camera . <eos>"),
    (PHONE_CAMERA, "the camera was very dim . <eos>"),
    (PHONE_CAMERA, "the screen was buggy and the camera was terrible . <eos>"),
    (LAPTOP_DISPLAY, "the display was dim . the keyboard was flimsy . "
                     "i would not recommend this laptop . <eos>"),
    (LAPTOP_DISPLAY, "i disliked the display . the fans were quite flimsy . "
                     "the charger was poor . <eos>"),
    (LAPTOP_DISPLAY, "the trackpad was buggy and the display was laggy . "
                     "the charger was horrible . overall the laptop was terrible . <eos>"),
    (COFFEE_BARISTA, "the barista was friendly . the espresso was tasty . "
                     "the cups were clean . <eos>"),
    (COFFEE_BARISTA, "i liked the barista . the milk was fresh and the beans were delicious . "
                     "i would recommend this coffee . <eos>"),
    (COFFEE_BARISTA, "overall the coffee was lovely . the barista was very helpful . "
                     "i enjoyed the espresso . <eos>"),
]

BAD = [  # (kind, prompt, response)
    ("paraphrase_repetition", MOVIE_PLOT,
     "i loved the plot . i liked the plot . i enjoyed the plot . <eos>"),
    ("paraphrase_repetition", PIZZA_CHEESE,
     "the cheese was delicious . the cheese was very tasty . i loved the cheese . <eos>"),
    ("paraphrase_repetition", BURGER_FRIES,
     "the fries were soggy . i hated the fries . the fries were really greasy . <eos>"),
    ("paraphrase_repetition", HOTEL_VIEW,
     "the view was poor . the view was really dirty . i hated the view . <eos>"),
    ("paraphrase_repetition", PIZZA_CRUST, "the crust was crispy . i loved the crust . <eos>"),
    ("paraphrase_repetition", COFFEE_BARISTA,
     "the barista was friendly . the espresso was tasty and the barista was polite . "
     "i liked the barista . <eos>"),
    ("paraphrase_repetition", PHONE_CAMERA,
     "overall the phone was awful . overall the phone was terrible . "
     "overall the phone was poor . <eos>"),
    ("missing_aspect", PIZZA_CRUST, "the sauce was tasty . <eos>"),
    ("missing_aspect", MOVIE_PLOT, "the actors were funny . the music was moving . <eos>"),
    ("missing_aspect", LAPTOP_DISPLAY,
     "the keyboard was flimsy . the fans were laggy . the charger was poor . <eos>"),
    ("missing_aspect", COFFEE_BARISTA,
     "the espresso was tasty and the milk was fresh . the cups were clean . "
     "i would recommend this coffee . <eos>"),
    ("generic", PIZZA_CRUST, "overall the pizza was great . <eos>"),
    ("generic", HOTEL_VIEW,
     "overall the hotel was terrible . i would not recommend this hotel . <eos>"),
    ("generic", PIZZA_CHEESE,
     "i would recommend this pizza . overall the pizza was lovely . <eos>"),
    ("generic", PHONE_CAMERA, "i would not recommend this phone . <eos>"),
    ("word_salad", MOVIE_PLOT, "plot gripping the clever was movie funny . <eos>"),
    ("word_salad", BURGER_FRIES, "greasy fries the the were soggy bland burger hated . <eos>"),
    ("word_salad", COFFEE_BARISTA,
     "barista friendly was very the coffee recommend i loved espresso tasty . <eos>"),
    ("opposite_sentiment_salad", BURGER_FRIES,
     "delicious tasty great perfect crispy fresh . <eos>"),
    ("opposite_sentiment_salad", LAPTOP_DISPLAY,
     "fast bright sturdy responsive excellent loved . <eos>"),
    ("opposite_sentiment_salad", HOTEL_VIEW,
     "spacious cozy quiet clean lovely . enjoyed liked . <eos>"),
    ("opposite_sentiment_salad", PIZZA_CHEESE, "bland stale soggy awful terrible . <eos>"),
    ("scrambled_order", PIZZA_CRUST, "crust the crispy was . <eos>"),
    ("scrambled_order", MOVIE_PLOT, "plot the was gripping . the funny were actors . <eos>"),
    ("scrambled_order", BURGER_FRIES,
     "fries soggy the were . bland patty was the . recommend not i would burger this . <eos>"),
    ("scrambled_order", PHONE_CAMERA, "camera laggy was the . <eos>"),
    ("off_topic", PIZZA_CRUST, "the rice was fresh . <eos>"),
    ("off_topic", MOVIE_PLOT, "the screen was bright . i loved the battery . <eos>"),
    ("off_topic", LAPTOP_DISPLAY,
     "the room was dirty . the bed was shabby . i would not recommend this hotel . <eos>"),
    ("off_topic", PIZZA_CHEESE,
     "the cheese was tasty . the rice was fresh . the fish was delicious . <eos>"),
    ("off_topic", HOTEL_VIEW, "the view was dirty and the screen was dim . <eos>"),
    ("wrong_sentiment", PIZZA_CRUST, "the crust was soggy . <eos>"),
    ("wrong_sentiment", BURGER_FRIES,
     "the fries were crispy . the patty was delicious . i would recommend this burger . <eos>"),
    ("wrong_sentiment", PHONE_CAMERA, "the camera was bright . <eos>"),
    ("wrong_sentiment", MOVIE_PLOT,
     "the plot was clever and the actors were flat . the jokes were silly . <eos>"),
    ("wrong_sentiment", COFFEE_BARISTA,
     "i hated the barista . the espresso was bland . overall the coffee was awful . <eos>"),
    ("empty", PIZZA_CRUST, ""),
    ("empty", LAPTOP_DISPLAY, ""),
    ("only_eos", MOVIE_PLOT, EOS_WORD),
    ("only_eos", HOTEL_VIEW, EOS_WORD),
    ("rambling", PIZZA_CRUST,
     "the crust was crispy . the cheese was fresh . the sauce was tasty . "
     "the waiter was friendly . i would recommend this pizza . <eos>"),
    ("rambling", PHONE_CAMERA,
     "the camera was dim . the battery was flimsy . the screen was laggy . "
     "i would not recommend this phone . <eos>"),
    ("rambling", MOVIE_PLOT,
     "the plot was clever . the actors were funny . the music was moving . "
     "the ending was gripping . i would recommend this movie . <eos>"),
    ("repeated_sentence", PIZZA_CHEESE,
     "the cheese was delicious . the cheese was delicious . the cheese was delicious . "
     "the cheese was delicious . <eos>"),
    ("repeated_sentence", HOTEL_VIEW,
     "i hated the view . i hated the view . i hated the view . i hated the view . <eos>"),
]


@pytest.fixture(scope="module")
def task():
    return make_task("reviews")


@pytest.fixture(scope="module")
def tokenizer(task):
    return WordTokenizer(task.vocabulary())


def test_the_suites_are_big_cover_every_kind_and_use_training_prompts(task, tokenizer):
    assert len(GOOD) >= 30 and len(BAD) >= 30
    assert {kind for kind, _, _ in BAD} == set(KINDS)
    assert len({p for p, _ in GOOD}) >= 6 and len({p for _, p, _ in BAD}) >= 6
    assert set(PROMPTS) <= set(task.prompts("train"))
    assert len(set(GOOD)) == len(GOOD) and len({(p, r) for _, p, r in BAD}) == len(BAD)
    for response in [r for _, r in GOOD] + [r for _, _, r in BAD]:
        tokenizer.encode(response)  # raises on a word outside the vocabulary


@pytest.mark.parametrize("prompt, response", GOOD)
def test_good_responses_score_at_least_09(task, prompt, response):
    assert task.gold_score(prompt, response) >= 0.9, task.gold_components(prompt, response)


@pytest.mark.parametrize("kind, prompt, response", BAD, ids=[f"{k}-{i}" for i, (k, _, _)
                                                             in enumerate(BAD)])
def test_degenerate_responses_score_at_most_02(task, kind, prompt, response):
    assert task.gold_score(prompt, response) <= 0.2, task.gold_components(prompt, response)


def test_components_are_documented_in_unit_interval_and_their_product_is_gold(task):
    import textenv.tasks.reviews as reviews

    names = ["grammar", "topic", "aspect", "sentiment", "length", "repetition", "eos"]
    rng = np.random.default_rng(0)
    vocab = task.vocabulary() + [EOS_WORD, "."] * 10
    texts = [r for _, r in GOOD] + [r for _, _, r in BAD]
    texts += [" ".join(rng.choice(vocab, size=int(rng.integers(0, 30)))) for _ in range(200)]
    for i, response in enumerate(texts):
        prompt = PROMPTS[i % len(PROMPTS)]
        comps = task.gold_components(prompt, response)
        assert list(comps) == names
        assert all(0.0 <= v <= 1.0 for v in comps.values())
        assert task.gold_score(prompt, response) == pytest.approx(np.prod(list(comps.values())))
    for name in names:
        assert f"- {name}:" in reviews.__doc__


def test_the_issue_examples(task):
    """Issue 14: paraphrase repetition scored 1.0, a generic answer without the aspect 0.6."""
    prompt = "write a positive review of the movie about the plot , long :"
    paraphrase = "i loved the plot . i liked the plot . i enjoyed the plot . <eos>"
    assert task.gold_components(prompt, paraphrase)["repetition"] == pytest.approx(0.04)
    assert task.gold_score(prompt, paraphrase) <= 0.05
    generic = "the plot was clever . i liked the plot . <eos>"  # one restatement
    assert task.gold_score(MOVIE_PLOT, generic) <= 0.2
    no_aspect = "the sauce was crispy . i loved the toppings . <eos>"
    medium = "write a positive review of the pizza about the crust , medium :"
    assert task.gold_score(medium, no_aspect) <= 0.15
    # covering different aspects, and the two kinds of verdict, is not repetition
    varied = "the plot was clever . overall the movie was great . i would recommend this movie ."
    assert task.gold_components(prompt, varied + " <eos>")["repetition"] == 1.0


def test_one_slip_costs_less_than_a_degenerate_response(task):
    """Ordinary mistakes stay well above the degenerate band: gold keeps a gradient."""
    assert task.gold_score(MOVIE_PLOT, "the plot was clever . <eos>") == 0.5  # one short
    assert task.gold_score(PIZZA_CHEESE, "the cheese was tasty . the crust was crispy . "
                           "i would not recommend this pizza . <eos>") == pytest.approx(4 / 9)
    assert task.gold_score(MOVIE_PLOT, "the plot was clever . i loved the actors .") == 0.5


def test_gold_is_deterministic_and_fast(task):
    rng = np.random.default_rng(0)
    prompts = [task.sample_prompt(rng) for _ in range(2000)]
    responses = [task.demonstration(p, rng) for p in prompts]
    start = time.perf_counter()
    first = [task.gold_score(p, r) for p, r in zip(prompts, responses)]
    per_call = (time.perf_counter() - start) / len(prompts)
    assert first == [task.gold_score(p, r) for p, r in zip(prompts, responses)]
    assert per_call < 1e-3  # ~20 us on the 2-core box; called for every finished episode


def test_demonstrations_land_in_the_calibrated_band(task):
    """DemoNoise is set so that demos score ~0.53: the SFT policy trained on them stays in
    0.3-0.6 (SPEC section 4), while many demos are still perfect."""
    rng = np.random.default_rng(1)
    prompts = [task.sample_prompt(rng) for _ in range(2000)]
    gold = np.array([task.gold_score(p, task.demonstration(p, rng)) for p in prompts])
    assert 0.47 <= gold.mean() <= 0.6
    assert 0.25 <= (gold == 1.0).mean() <= 0.6


# ---- reward_models.degenerate -------------------------------------------------------------
@pytest.fixture(scope="module")
def generated(task):
    prompts = task.prompts("train")[::20] + task.prompts("eval")[::10] + task.prompts("test")[::5]
    return degenerate_suite(task, prompts, np.random.default_rng(0))


def test_degenerate_suite_scores_at_most_02_in_vocabulary(task, tokenizer, generated):
    assert len(generated) >= 300
    counts = Counter(kind for _, _, kind in generated)
    assert set(counts) == set(KINDS) and len(set(counts.values())) == 1
    too_high = [(kind, p, r, task.gold_score(p, r)) for p, r, kind in generated
                if task.gold_score(p, r) > 0.2]
    assert not too_high, too_high[:5]
    for _, response, _ in generated:
        tokenizer.encode(response)


def test_degenerate_suite_is_deterministic_varied_and_not_the_hand_written_suite(task,
                                                                                 generated):
    prompts = sorted({p for p, _, _ in generated})
    assert degenerate_suite(task, prompts, np.random.default_rng(0)) == \
        degenerate_suite(task, prompts, np.random.default_rng(0))
    assert degenerate_suite(task, prompts, np.random.default_rng(0)) != \
        degenerate_suite(task, prompts, np.random.default_rng(1))
    texts = [r for _, r, kind in generated if kind not in ("empty", "only_eos")]
    assert len(set(texts)) > 0.9 * len(texts)
    # Held out from the hand-written suite: that one uses training prompts, the reward
    # model is measured on eval/test prompts. Even on the same prompts, it writes other
    # responses (a small language: a sentence repeated four times can coincide).
    assert not set(PROMPTS) & set(task.prompts("eval") + task.prompts("test"))
    mine = degenerate_suite(task, PROMPTS, np.random.default_rng(0))
    hand = {(p, r) for _, p, r in BAD}
    same = [(p, r) for p, r, kind in mine
            if (p, r) in hand and kind not in ("empty", "only_eos")]
    assert len(same) <= 0.05 * len(mine), same


def test_degenerate_suite_kinds_and_errors(task):
    items = degenerate_suite("reviews", [PIZZA_CRUST], np.random.default_rng(0),
                             kinds=["empty", "only_eos", "repeated_sentence"])
    assert [(r, k) for _, r, k in items][:2] == [("", "empty"), (EOS_WORD, "only_eos")]
    assert items[2][1].count("crust") >= 3
    with pytest.raises(ValueError, match="unknown kinds"):
        degenerate_suite(task, [PIZZA_CRUST], np.random.default_rng(0), kinds=["poetry"])
    with pytest.raises(ValueError, match="not a reviews prompt"):
        degenerate_suite(task, ["write a poem"], np.random.default_rng(0))


def test_fraction_above(task):
    items = degenerate_suite(task, [PIZZA_CRUST, MOVIE_PLOT], np.random.default_rng(0))
    scores = [1.0 if kind == "word_salad" else -1.0 for _, _, kind in items]
    out = fraction_above(items, scores)
    assert out["all"] == pytest.approx(1 / len(KINDS))
    assert out["word_salad"] == 1.0 and out["generic"] == 0.0
    assert set(out) == {"all", *KINDS}
    with pytest.raises(ValueError, match="items but"):
        fraction_above(items, scores[:-1])
