"""Degenerate responses, written programmatically, to test a reward model against.

A reward model learned from rankings of SFT samples can score degenerate text above good
text (scrambled word order, word salad of the right sentiment words, paraphrase
repetition, generic answers...). `degenerate_suite` writes such responses for held-out
prompts, of the same kinds as the hand-written suite in tests/test_gold.py but by other
means (so the two share no responses beyond the empty ones), and every one of them scores
gold <= 0.2. A calibrated reward model (SFT samples ~ mean 0) should score them below 0:

    items = degenerate_suite(task, task.prompts("test"), np.random.default_rng(0))
    scores = rm.score([p for p, _, _ in items], [r for _, r, _ in items]).tolist()
    fraction_above(items, scores)        # {"all": ..., "word_salad": ..., ...}

Kinds (`KINDS`):

    paraphrase_repetition     one aspect (or claim) said three or more times in other words
    missing_aspect            a fluent, on-topic review that never names the requested aspect
    generic                   only "overall the T was ..." / "i would recommend this T"
    word_salad                words of the topic and sentiment in no grammatical order
    opposite_sentiment_salad  a salad of the opposite sentiment's words (positive words on
                              a negative prompt, and the other way round)
    scrambled_order           a perfect response with the words of every sentence shuffled
    off_topic                 a fluent review of another topic
    wrong_sentiment           a fluent review with the opposite (or a mixed) sentiment
    empty                     nothing, not even `<eos>`
    only_eos                  `<eos>` alone
    rambling                  far more sentences than asked
    repeated_sentence         one good sentence repeated three to five times

Deterministic for a given rng; every word is in the task's vocabulary.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np

from textenv.tasks import Task, make_task
from textenv.tasks.reviews import (
    ADJECTIVES,
    ADVERBS,
    ASPECTS,
    EOS_WORD,
    TOPICS,
    VERBS,
    Instruction,
    ReviewsTask,
)

KINDS = ("paraphrase_repetition", "missing_aspect", "generic", "word_salad",
         "opposite_sentiment_salad", "scrambled_order", "off_topic", "wrong_sentiment",
         "empty", "only_eos", "rambling", "repeated_sentence")

Item = tuple[str, str, str]  # (prompt, response, kind)


def degenerate_suite(task: Task | str, prompts: Sequence[str], rng: np.random.Generator,
                     kinds: Sequence[str] = KINDS) -> list[Item]:
    """One degenerate response of every kind for every prompt: (prompt, response, kind),
    prompt by prompt, kinds in the order given."""
    task = make_task(task)
    if not isinstance(task, ReviewsTask):
        raise ValueError(f"degenerate_suite writes responses for the 'reviews' task only, "
                         f"not {getattr(task, 'name', task)!r}")
    unknown = [k for k in kinds if k not in _WRITERS]
    if unknown:
        raise ValueError(f"unknown kinds {unknown}; valid: {', '.join(KINDS)}")
    items = []
    for prompt in prompts:
        ins = task.parse_prompt(prompt)
        for kind in kinds:
            items.append((prompt, _WRITERS[kind](_Writer(task, ins, prompt, rng)), kind))
    return items


def has_degenerate_suite(task: Task | str) -> bool:
    """Whether `degenerate_suite` writes responses for `task` (reviews only: other tasks
    record no degenerate-text metric)."""
    return isinstance(make_task(task), ReviewsTask)


def fraction_above(items: Sequence[Item], scores: Sequence[float],
                   threshold: float = 0.0) -> dict[str, float]:
    """The fraction of `items` whose reward is above `threshold` (default: the SFT mean of
    a calibrated reward model), over all items (`"all"`) and kind by kind."""
    if len(items) != len(scores):
        raise ValueError(f"{len(items)} items but {len(scores)} scores")
    above = np.asarray(scores, dtype=float) > threshold
    kinds = np.array([kind for _, _, kind in items])
    out = {"all": float(above.mean()) if len(above) else 0.0}
    for kind in dict.fromkeys(kinds.tolist()):
        out[kind] = float(above[kinds == kind].mean())
    return out


class _Writer:
    """Sentences of the reviews grammar for one instruction, drawn with one rng."""

    def __init__(self, task: ReviewsTask, ins: Instruction, prompt: str,
                 rng: np.random.Generator):
        self.task, self.ins, self.prompt, self.rng = task, ins, prompt, rng
        self.pol = ins.polarity
        self.anti = "neg" if self.pol == "pos" else "pos"
        self.others = [a for a, _, _ in TOPICS[ins.topic] if a != ins.aspect]

    def pick(self, seq: Sequence, k: int | None = None):
        if k is None:
            return seq[int(self.rng.integers(len(seq)))]
        return [seq[int(i)] for i in self.rng.permutation(len(seq))[:k]]

    def adjective(self, aspect: str, pol: str) -> str:
        return self.pick(ADJECTIVES[ASPECTS[aspect][1]][pol] + ADJECTIVES["general"][pol])

    @staticmethod
    def be(aspect: str) -> str:
        return "were" if ASPECTS[aspect][0] else "was"

    def claim(self, aspect: str, pol: str, form: int | None = None) -> str:
        """One sentence about `aspect` (forms: 0 `the A was ADJ`, 1 `the A was ADV ADJ`,
        2 `i VERB the A`)."""
        form = int(self.rng.integers(3)) if form is None else form
        if form == 0:
            return f"the {aspect} {self.be(aspect)} {self.adjective(aspect, pol)} ."
        if form == 1:
            return (f"the {aspect} {self.be(aspect)} {self.pick(ADVERBS)} "
                    f"{self.adjective(aspect, pol)} .")
        return f"i {self.pick(VERBS[pol])} the {aspect} ."

    def pair(self, a1: str, p1: str, a2: str, p2: str) -> str:
        return (f"the {a1} {self.be(a1)} {self.adjective(a1, p1)} and the {a2} "
                f"{self.be(a2)} {self.adjective(a2, p2)} .")

    def overall(self, topic: str, pol: str) -> str:
        return f"overall the {topic} was {self.pick(ADJECTIVES['general'][pol])} ."

    @staticmethod
    def recommend(topic: str, pol: str) -> str:
        return f"i would {'' if pol == 'pos' else 'not '}recommend this {topic} ."

    def fluent(self, aspects: Sequence[str], pol: str) -> list[str]:
        """One sentence per aspect, sometimes two aspects joined by `and`."""
        out, rest = [], list(aspects)
        while rest:
            if len(rest) >= 2 and self.rng.random() < 0.25:
                out.append(self.pair(rest[0], pol, rest[1], pol))
                rest = rest[2:]
            else:
                out.append(self.claim(rest.pop(0), pol))
        return out


def _done(sentences: Sequence[str], eos: bool = True) -> str:
    return " ".join([*sentences, EOS_WORD] if eos else sentences)


def _paraphrase_repetition(w: _Writer) -> str:
    ins, n = w.ins, w.ins.n_sentences
    variant = int(w.rng.integers(4))
    if variant == 0:  # "i loved the plot . i liked the plot . i enjoyed the plot ."
        verbs = w.pick(VERBS[w.pol], 3)
        sentences = [f"i {v} the {ins.aspect} ." for v in verbs]
    elif variant == 1:  # the requested aspect in every form, three or four times
        forms = [0, 1, 2, int(w.rng.integers(2))][: max(3, min(n + 1, 4))]
        sentences = [w.claim(ins.aspect, w.pol, f) for f in w.pick(forms, len(forms))]
    elif variant == 2:  # the aspect once, then another aspect restated twice
        other = w.pick(w.others)
        sentences = [w.claim(ins.aspect, w.pol)] + [w.claim(other, w.pol, f)
                                                     for f in w.pick([0, 1, 2], 3)]
    else:  # the same claim about the topic, restated
        adjectives = w.pick(ADJECTIVES["general"][w.pol], 3)
        sentences = [w.claim(ins.aspect, w.pol)] + [
            f"overall the {ins.topic} was {a} ." for a in adjectives]
    return _done(sentences)


def _missing_aspect(w: _Writer) -> str:
    n = w.ins.n_sentences
    aspects = w.pick(w.others, n + int(w.rng.integers(2)))  # `and` may take two
    sentences = w.fluent(aspects, w.pol)[:n]
    if len(sentences) < n:
        sentences.append(w.overall(w.ins.topic, w.pol))
    return _done(sentences)


def _generic(w: _Writer) -> str:
    t, n = w.ins.topic, w.ins.n_sentences
    sentences = [w.overall(t, w.pol), w.recommend(t, w.pol)]
    sentences = w.pick(sentences, 2)[:n] if n < 3 else sentences + [w.overall(t, w.pol)]
    return _done(sentences)


def _salad(w: _Writer, pool: list[str]) -> str:
    n_words = int(w.rng.integers(3, 26))
    while True:
        words = [w.pick(pool) for _ in range(n_words)]
        cuts = sorted(w.pick(list(range(2, n_words)), int(w.rng.integers(0, n_words // 4 + 1))))
        for c in reversed(cuts):
            words.insert(c, ".")
        sentences, _ = w.task.split_response(" ".join(words) + " .")
        if not any(w.task.parse_sentence(s) for s in sentences):  # a salad, not a review
            break
    end = [".", EOS_WORD] if w.rng.random() < 0.8 else [EOS_WORD]
    return " ".join(words + end)


def _word_salad(w: _Writer) -> str:
    aspects = [a for a, _, _ in TOPICS[w.ins.topic]]
    sentiment = ADJECTIVES["general"][w.pol] + VERBS[w.pol]
    sentiment += [adj for a in aspects for adj in ADJECTIVES[ASPECTS[a][1]][w.pol]]
    glue = ["the", "was", "were", "and", "i", "overall", "would", "recommend", "this",
            w.ins.topic, *ADVERBS]
    return _salad(w, aspects + [w.ins.aspect] * 3 + sentiment + glue)


def _opposite_sentiment_salad(w: _Writer) -> str:
    words = [a for cls in ADJECTIVES.values() for a in cls[w.anti]] + VERBS[w.anti]
    if w.rng.random() < 0.5:  # with the requested aspect and topic sprinkled in
        words += [w.ins.aspect, w.ins.topic, "the"]
    return _salad(w, words)


def _scrambled_order(w: _Writer) -> str:
    sentences, _ = w.task.split_response(w.task.best_response(w.prompt, w.rng))
    out = []
    for words in sentences:
        shuffled = list(words)
        while shuffled == words or w.task.parse_sentence(shuffled) is not None:
            shuffled = [words[int(i)] for i in w.rng.permutation(len(words))]
        out.append(" ".join(shuffled) + " .")
    return _done(out)


def _off_topic(w: _Writer) -> str:
    ins, n = w.ins, w.ins.n_sentences
    topic = w.pick([t for t in TOPICS if t != ins.topic])
    aspects = [a for a, _, _ in TOPICS[topic]]
    if n == 3 and w.rng.random() < 0.5:  # names the aspect once, then drifts away
        return _done([w.claim(ins.aspect, w.pol)] + w.fluent(w.pick(aspects, 2), w.pol))
    sentences = w.fluent(w.pick(aspects, n), w.pol)
    if w.rng.random() < 0.3:  # a sentence that mixes the two topics is off topic as well
        sentences[0] = w.pair(ins.aspect, w.pol, w.pick(aspects), w.pol)
    while len(sentences) < n:
        sentences.append(w.recommend(topic, w.pol))
    return _done(sentences)


def _wrong_sentiment(w: _Writer) -> str:
    ins, n = w.ins, w.ins.n_sentences
    aspects = [ins.aspect, *w.pick(w.others, n - 1)]
    variant = int(w.rng.integers(3))
    if variant == 0:  # every sentence of the opposite sentiment
        sentences = [w.claim(a, w.anti) for a in aspects]
    elif variant == 1:  # every sentence mixes the two
        pairs = [(a, w.pick([b for b, _, _ in TOPICS[ins.topic] if b != a])) for a in aspects]
        sentences = [w.pair(a, w.pol, b, w.anti) if w.rng.random() < 0.5
                     else w.pair(a, w.anti, b, w.pol) for a, b in pairs]
    else:  # the aspect is praised (or panned) as asked, the rest and the verdict are not
        sentences = [w.claim(ins.aspect, w.pol)] if n == 3 else []
        sentences += [w.claim(a, w.anti) for a in aspects[len(sentences):]]
        sentences[-1] = w.recommend(ins.topic, w.anti)
        if n == 1:
            sentences = [w.claim(ins.aspect, w.anti)]
    return _done(sentences)


def _rambling(w: _Writer) -> str:
    ins, n = w.ins, w.ins.n_sentences
    candidates = ([w.claim(ins.aspect, w.pol)] + [w.claim(a, w.pol) for a in w.pick(w.others, 4)]
                  + w.pick([w.overall(ins.topic, w.pol), w.recommend(ins.topic, w.pol)], 2))
    budget = w.task.max_response_tokens - 1
    sentences: list[str] = []
    for s in candidates:
        if sum(len(x.split()) for x in sentences) + len(s.split()) > budget:
            break
        sentences.append(s)
        if len(sentences) >= n + 3 and w.rng.random() < 0.5:
            break
    return _done(sentences)


def _repeated_sentence(w: _Writer) -> str:
    sentence = w.claim(w.ins.aspect, w.pol)
    return _done([sentence] * int(w.rng.integers(3, 6)))


_WRITERS: dict[str, Callable[[_Writer], str]] = {
    "paraphrase_repetition": _paraphrase_repetition,
    "missing_aspect": _missing_aspect,
    "generic": _generic,
    "word_salad": _word_salad,
    "opposite_sentiment_salad": _opposite_sentiment_salad,
    "scrambled_order": _scrambled_order,
    "off_topic": _off_topic,
    "wrong_sentiment": _wrong_sentiment,
    "empty": lambda w: "",
    "only_eos": lambda w: EOS_WORD,
    "rambling": _rambling,
    "repeated_sentence": _repeated_sentence,
}
assert set(_WRITERS) == set(KINDS)
