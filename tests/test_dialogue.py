"""The `dialogue` task: the simulated customer, the gold scorer, splits, demonstrations."""

import numpy as np
import pytest

from textenv.tasks import make_task
from textenv.tasks.dialogue import ATTRIBUTES, EOS_WORD, ITEMS, DialogueState
from textenv.tokenizer import WordTokenizer

PROMPT = "customer : i want a red phone ."  # size unknown: the fewest turns is 2
GOOD = ("which size ? <eos> customer : small . try the small red phone . <eos> "
        "customer : yes thanks .")


@pytest.fixture(scope="module")
def task():
    return make_task("dialogue")


def test_perfect_dialogue_scores_one(task):
    assert task.gold_score(PROMPT, GOOD) == 1.0
    assert task.gold_components(PROMPT, GOOD) == {"success": 1.0, "turns": 1.0, "grammar": 1.0,
                                                  "eos": 1.0}


@pytest.mark.parametrize("bad", [
    # asks what the customer already said (a wasted turn)
    "which color ? <eos> customer : red . which size ? <eos> customer : small . "
    "try the small red phone . <eos> customer : yes thanks .",
    # a yes/no question that fails and leaves the size open (a wasted turn)
    "is it large ? <eos> customer : no . is it small ? <eos> customer : yes . "
    "try the small red phone . <eos> customer : yes thanks .",
    # a turn the customer did not understand
    "which red ? <eos> customer : sorry ? which size ? <eos> customer : small . "
    "try the small red phone . <eos> customer : yes thanks .",
    # a turn cut off at the limit (the env closed it with its own <eos>)
    "which size ? which size ? which <eos> customer : sorry ? which size ? <eos> "
    "customer : small . try the small red phone . <eos> customer : yes thanks .",
    # a turn that ends but does not parse
    "which size ? which size <eos> customer : sorry ? which size ? <eos> customer : small . "
    "try the small red phone . <eos> customer : yes thanks .",
    # guessed too early, wrongly
    "try the large red phone . <eos> customer : no thanks .",
    # never recommends
    "which size ? <eos> customer : small .",
])
def test_each_kind_of_mistake_scores_strictly_lower(task, bad):
    assert task.gold_score(PROMPT, bad) < task.gold_score(PROMPT, GOOD)


def test_a_yes_no_guess_costs_a_turn_only_when_it_leaves_values_open(task):
    prompt = "customer : i want a small phone ."  # four colors
    guess = ("is it blue ? <eos> customer : no . which color ? <eos> customer : red . "
             "try the small red phone . <eos> customer : yes thanks .")
    assert task.gold_components(prompt, guess)["turns"] == 0.8


def test_cut_off_turn_costs_the_eos_factor(task):
    cut = ("which size ? which size ? which <eos> customer : sorry ? which size ? <eos> "
           "customer : small . try the small red phone . <eos> customer : yes thanks .")
    assert task.gold_components(PROMPT, cut)["eos"] == 0.5
    assert task.gold_components(PROMPT, GOOD)["eos"] == 1.0


def test_failure_scores_zero(task):
    assert task.gold_score(PROMPT, "try the large red phone . <eos> customer : no thanks .") == 0
    assert task.gold_score(PROMPT, "") == 0.0


def test_gold_score_in_unit_interval_on_random_text(task):
    rng = np.random.default_rng(0)
    vocab = task.vocabulary() + [EOS_WORD]
    for _ in range(300):
        prompt = task.sample_prompt(rng)
        transcript = " ".join(rng.choice(vocab, size=int(rng.integers(0, 40))))
        assert 0.0 <= task.gold_score(prompt, transcript) <= 1.0


def test_customer_is_truthful_and_terse(task):
    for item in ITEMS:
        state = DialogueState(item, {"kind": item.kind})
        for attribute, values in ATTRIBUTES.items():
            assert task.user_reply(state, f"which {attribute} ? {EOS_WORD}") == (
                f"customer : {item.value(attribute)} .", None)
            for v in values:
                reply, outcome = task.user_reply(state, f"is it {v} ? {EOS_WORD}")
                assert reply == f"customer : {'yes' if item.value(attribute) == v else 'no'} ."
        reply, outcome = task.user_reply(state, f"try the {item.words()} . {EOS_WORD}")
        assert (reply, outcome) == ("customer : yes thanks .", "success")
        other = ITEMS[(ITEMS.index(item) + 1) % len(ITEMS)]
        assert task.user_reply(state, f"try the {other.words()} . {EOS_WORD}")[1] == "failure"
        assert task.user_reply(state, "try the")[0] == "customer : sorry ?"  # cut off
        assert len(state.turns) == len(ATTRIBUTES) + sum(map(len, ATTRIBUTES.values())) + 3


def test_best_dialogue_is_perfect_on_every_held_out_game(task):
    rng = np.random.default_rng(0)
    for split in ("eval", "test"):
        for game in task.games[split]:
            state = DialogueState(game.target, {a: game.target.value(a) for a in game.revealed})
            assert task.gold_score(game.prompt, task.play(game.prompt, rng, None, state)) == 1.0


def test_demonstrations_are_imperfect_but_useful(task):
    rng = np.random.default_rng(0)
    prompts = [task.sample_prompt(rng) for _ in range(500)]
    comps = [task.gold_components(p, task.demonstration(p, rng)) for p in prompts]
    gold = np.array([np.prod(list(c.values())) for c in comps])
    assert 0.4 < gold.mean() < 0.85  # room for RL above the demonstrators
    assert (gold == 1.0).mean() > 0.25
    assert np.mean([c["turns"] < 1 for c in comps]) > 0.1  # some ask too much
    assert np.mean([c["success"] == 0 for c in comps]) > 0.1  # some guess too early


def test_splits_hold_out_hidden_preferences(task):
    train = {g.target for g in task.games["train"]}
    test = {g.target for g in task.games["test"]}
    assert test and not train & test
    assert all(task.games[s] for s in ("train", "eval", "test"))
    with pytest.raises(ValueError, match="unknown split"):
        task.prompts("nope")
    # A test prompt draws its hidden preference among the test items only.
    rng = np.random.default_rng(0)
    for prompt in task.prompts("test")[:20]:
        assert task.new_dialogue(prompt, rng, "test").target in test


def test_sizes_fit_the_limits_and_the_vocabulary(task):
    tok = WordTokenizer(task.vocabulary())
    rng = np.random.default_rng(1)
    for split in ("train", "eval", "test"):
        for prompt in task.prompts(split):
            assert len(tok.encode(prompt)) <= task.max_prompt_tokens
    for _ in range(300):
        prompt = task.sample_prompt(rng)
        transcript = task.demonstration(prompt, rng)
        tok.encode(transcript)  # every word is in the vocabulary
        assert len(transcript.split()) <= task.max_response_tokens
        for role, text in task.split_transcript(transcript):
            limit = task.max_turn_tokens if role == "agent" else task.max_reply_tokens
            assert len(text.split()) <= limit
        mask = task.agent_mask(transcript)
        assert len(mask) == len(transcript.split()) and any(mask) and not all(mask)


def test_same_rng_same_game(task):
    a = task.new_dialogue(PROMPT, np.random.default_rng(7))
    b = task.new_dialogue(PROMPT, np.random.default_rng(7))
    assert a == b and a.target.color == "red" and a.target.kind == "phone"


def test_bad_prompt_raises_with_an_example(task):
    with pytest.raises(ValueError, match="not a dialogue opening line"):
        task.parse_prompt("customer : i want a phone")
    with pytest.raises(ValueError, match="not a dialogue opening line"):
        task.gold_score("hello", GOOD)


def test_sft_targets_are_the_agents_tokens_only(task, monkeypatch):
    import textenv.pipeline as pipeline
    from textenv.model import GPT, GPTConfig

    tok = pipeline.build_tokenizer(task)
    batches = []

    def fake_train(model, sample_batch, **kw):  # capture one batch instead of training
        batches.append(sample_batch(np.random.default_rng(0)))
        return [0.0]

    monkeypatch.setattr(pipeline, "train_lm", fake_train)
    base = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=80, n_layer=1, n_head=2,
                         n_embd=16))
    pipeline.supervised_finetune(base, task, tok, pipeline.SFTConfig(demos=50, batch_size=16),
                                 seed=0)
    batch = batches[0]
    customer = tok.encode("customer")[0]
    for ids, target in zip(batch.input_ids, batch.loss_mask):
        targets = tok.decode(ids[target].tolist()).split()
        assert targets and "customer" not in targets and targets[-1] == EOS_WORD
        assert (ids == customer).sum() >= 2  # the prompt's and the replies' (context)


def test_generated_dialogues_follow_the_env_rules(task):
    import torch

    from textenv.model import GPT, GPTConfig
    from textenv.pipeline import build_tokenizer, generate_dialogues

    tok = build_tokenizer(task)
    torch.manual_seed(0)
    model = GPT(GPTConfig(vocab_size=tok.vocab_size, block_size=80, n_layer=1, n_head=2,
                          n_embd=16)).eval()
    prompts = task.prompts("eval")[:12]
    run = lambda: generate_dialogues(model, tok, task, prompts, seed=3,  # noqa: E731
                                     generator=torch.Generator().manual_seed(0), split="eval")
    transcripts = run()
    assert transcripts == run()  # same seeds, same dialogues
    answers = {f"customer : {r}" for r in
               ["sorry ?", "yes .", "no .", "yes thanks .", "no thanks ."]} | {
        f"customer : {v} ." for vs in ATTRIBUTES.values() for v in vs}
    for prompt, transcript in zip(prompts, transcripts):
        turns = task.split_transcript(transcript)
        assert all(t in answers for role, t in turns if role == "user")
        assert sum(role == "agent" for role, _ in turns) <= task.max_turns
        assert 0.0 <= task.gold_score(prompt, transcript) <= 1.0
