"""The `arithmetic` task: answer a sum, a difference or a product, digit by digit.

    prompt:   what is 3 7 plus 4 8 :
    response: 8 5 <eos>

A verifiable reward: the gold score checks the answer exactly (no labeler, no grammar).
Numbers are written one token per digit, most significant first, in prompts and answers
alike, so the whole vocabulary is 10 digits and 23 words, and a model can learn the
column-by-column algorithm instead of a table of 100 number tokens.

The problems
------------
Three operations, each in four phrasings (`PHRASINGS`):

    add        a + b        a, b in 0..99      "add A and B :", "what is A plus B :",
                                               "compute A + B :", "what is the sum of A and B :"
    subtract   a - b        a, b in 0..99,     "subtract B from A :", "what is A minus B :",
                            a >= b (results    "compute A - B :",
                            are never negative) "what is the difference of A and B :"
    multiply   a * b        a, b in 0..12      "multiply A by B :", "what is A times B :",
                                               "compute A * B :", "what is the product of A and B :"

Two difficulty levels: level 1 when both operands have one digit, level 2 when one has
two. An answer has 1 to 3 digits (99 + 99 = 198, 12 * 12 = 144). A number never has a
leading zero ("0" itself is one digit).

The gold score
--------------
`gold_score(prompt, response)` is the product of three components (`gold_components`
returns them by name). The answer is the words before `<eos>`; words after it are ignored.

- format: 1 when the answer is a number: 1 to 3 digit tokens, no leading zero; 0 for
          anything else (empty, `<eos>` alone, a word or `.` among the digits, a leading
          zero, four or more digits);
- value:  1 when the number is the right one; a near miss with as many digits as the right
          answer scores NEAR_MISS (0.2) x the fraction of digits right in their place
          ("8 4" for 85: 0.1; "1 4 3" for 144: 0.13); any other number 0 (so extra digits
          after the answer score 0);
- eos:    1 when the response ends with `<eos>`, CUT_OFF (0.5) when it was cut off.

So a right answer scores 1.0, the right digits without `<eos>` 0.5, and everything else
at most 0.2 x 2/3 = 0.13: degenerate output (empty, `<eos>` only, extra tokens after the
answer, words or punctuation) scores 0. tests/test_arithmetic_task.py holds a hand-written
suite of right, wrong and degenerate answers.

Demonstrations (the SFT data) make the mistakes people make, at the rates in `DemoNoise`
(30% of demonstrations are wrong in all): a forgotten carry or borrow, one digit off by
one, two adjacent digits swapped, or the wrong operation. Every demonstration is a
well-formed number followed by `<eos>`.

The pretraining corpus is documents of 1 to 3 statements ("3 7 plus 4 8 is 8 5 .",
"3 7 + 4 8 = 8 5 .", "the sum of 3 7 and 4 8 is 8 5 .") or, one in four, a prompt followed
by its answer ("what is 3 7 plus 4 8 : 8 5 <eos>"); 3% of the answers are wrong, as in web
text. Test problems never appear in it.

Splits
------
A problem is an operation and two operands; `a + b` and `b + a` are the same problem for
the commutative operations (add, multiply). For every operation and level, problems are
ordered by a stable hash; the first `test_problems` are the `test` split (every phrasing:
problems no training stage, pretraining included, ever saw), the next `eval_problems` have
one phrasing held out as the `eval` split (the problem was trained on in other words), and
the rest are `train`. Each split has every operation and level (`test`: 6 x 6 problems,
56 counting both orders of the operands, 224 prompts; `eval`: 6 x 16 problems, 151 prompts;
`train`: 60,501 prompts). `sample_prompt` draws the operation and the level uniformly,
then a prompt of that kind, so multiplication and one-digit problems are trained on as
often as the far more numerous two-digit sums.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from functools import cache, lru_cache
from itertools import chain, zip_longest

import numpy as np

EOS_WORD = "<eos>"
DIGITS = [str(d) for d in range(10)]

# operation -> its phrasings; A and B stand for the operands, written digit by digit.
PHRASINGS: dict[str, list[str]] = {
    "add": ["add A and B :", "what is A plus B :", "compute A + B :",
            "what is the sum of A and B :"],
    "subtract": ["subtract B from A :", "what is A minus B :", "compute A - B :",
                 "what is the difference of A and B :"],
    "multiply": ["multiply A by B :", "what is A times B :", "compute A * B :",
                 "what is the product of A and B :"],
}
# operation -> the largest operand
MAX_OPERAND = {"add": 99, "subtract": 99, "multiply": 12}
# operation -> the corpus's statements about it
STATEMENTS: dict[str, list[str]] = {
    "add": ["A plus B is C .", "A + B = C .", "the sum of A and B is C ."],
    "subtract": ["A minus B is C .", "A - B = C .", "the difference of A and B is C ."],
    "multiply": ["A times B is C .", "A * B = C .", "the product of A and B is C ."],
}
COMMUTATIVE = ("add", "multiply")
MAX_ANSWER_DIGITS = 3
NEAR_MISS = 0.2  # the value factor of a wrong number with the right digit count, x digits right
CUT_OFF = 0.5  # the eos factor when the response was cut off (no `<eos>`)
CORPUS_ERROR = 0.03  # fraction of wrong statements in the pretraining corpus


@dataclass(frozen=True)
class Problem:
    op: str  # "add" | "subtract" | "multiply"
    a: int
    b: int

    @property
    def answer(self) -> int:
        return _apply(self.op, self.a, self.b)

    @property
    def level(self) -> int:
        """1 when both operands have one digit, 2 otherwise."""
        return 1 if max(self.a, self.b) < 10 else 2

    @property
    def key(self) -> tuple[str, int, int]:
        """The problem up to the order of a commutative operation's operands."""
        if self.op in COMMUTATIVE:
            return (self.op, min(self.a, self.b), max(self.a, self.b))
        return (self.op, self.a, self.b)


@dataclass
class DemoNoise:
    """How often the simulated demonstrators get the answer wrong, and how.

    One demonstration makes at most one mistake; the rates add up to the fraction of wrong
    demonstrations (0.30). The SFT policy, a small LM trained on them, lands lower than the
    demonstrations: see quality.json's `sft_gold_mean`.
    """

    carry: float = 0.12
    """A forgotten carry (add), a borrow written as the smaller digit from the larger
    (subtract: 52 - 17 -> 45), or a slipped carry in a product (the tens off by one). On a
    problem with no carry or borrow: a spurious one."""
    off_by_one: float = 0.08
    """One digit one too high or too low."""
    swapped: float = 0.05
    """Two adjacent digits swapped (one digit off by one when they are equal)."""
    wrong_operation: float = 0.05
    """The answer of another operation on the same operands (a sum for a difference...)."""


def digits(n: int) -> str:
    """37 -> "3 7": a number as digit tokens."""
    return " ".join(str(n))


def _apply(op: str, a: int, b: int) -> int:
    if op == "add":
        return a + b
    if op == "subtract":
        return a - b
    if op == "multiply":
        return a * b
    raise ValueError(f"unknown operation {op!r}; valid: {', '.join(PHRASINGS)}")


_DIGITS_OF = [digits(n) for n in range(1000)]  # precomputed: the task formats 60k prompts


@cache
def _compiled(template: str) -> str:
    """"add A and B :" -> "add {A} and {B} :" (a str.format pattern)."""
    return " ".join(f"{{{w}}}" if w in ("A", "B", "C") else w for w in template.split())


def _fill(template: str, **numbers: int) -> str:
    """Write a template's placeholders (A, B, C) as digit tokens."""
    return _compiled(template).format(**{k: _DIGITS_OF[v] for k, v in numbers.items()})


def _format(template: str, p: Problem) -> str:
    return _fill(template, A=p.a, B=p.b)


# A number as digit tokens: "0" or 1-2 digits without a leading zero (operands <= 99).
_NUMBER = r"(0|[1-9](?: [0-9])?)"
# (operation, placeholders in the order they appear, pattern), one per phrasing
_PROMPT_PATTERNS = [
    (op, [w for w in template.split() if w in ("A", "B")], re.compile("^" + " ".join(
        _NUMBER if w in ("A", "B") else re.escape(w) for w in template.split()) + "$"))
    for op, templates in PHRASINGS.items() for template in templates]


@dataclass(frozen=True)
class _Splits:
    prompts: dict[str, list[str]]  # split -> every prompt, the strata taking turns
    by_stratum: dict[tuple[str, int], dict[str, list[str]]]  # (op, level) -> split -> prompts
    test_keys: frozenset[tuple[str, int, int]]
    train_problems: dict[tuple[str, int], list[Problem]]  # (op, level) -> non-test problems


@lru_cache(maxsize=4)
def _make_splits(test_problems: int, eval_problems: int) -> _Splits:
    """The three splits (see the module docstring); read-only, shared by every task object."""
    # (operation, level) -> problem key -> its problems (two for a commutative a != b)
    strata: dict[tuple[str, int], dict[tuple, list[Problem]]] = {}
    for op, top in MAX_OPERAND.items():
        for a in range(top + 1):
            for b in range(top + 1):
                if op == "subtract" and a < b:
                    continue  # results are never negative
                p = Problem(op, a, b)
                strata.setdefault((op, p.level), {}).setdefault(p.key, []).append(p)
    by_stratum, test_keys, train_problems = {}, set(), {}
    for stratum, by_key in sorted(strata.items()):
        keys = sorted(by_key, key=lambda k: _stable_fraction("problem " + repr(k)))
        out: dict[str, list[str]] = {"train": [], "eval": [], "test": []}
        templates = PHRASINGS[stratum[0]]
        for rank, key in enumerate(keys):
            if rank < test_problems:  # every phrasing held out of training
                test_keys.add(key)
                out["test"] += [_format(t, p) for p in by_key[key] for t in templates]
                continue
            train_problems.setdefault(stratum, []).extend(by_key[key])
            for p in by_key[key]:
                held_out = None  # one phrasing held out for the eval split
                if rank < test_problems + eval_problems:
                    fraction = _stable_fraction("phrasing " + repr(p))
                    held_out = templates[int(fraction * len(templates))]
                for t in templates:
                    out["eval" if t == held_out else "train"].append(_format(t, p))
        by_stratum[stratum] = out
    prompts = {}
    for split in ("train", "eval", "test"):  # round-robin over the strata
        lists = [out[split] for out in by_stratum.values()]
        prompts[split] = [p for p in chain(*zip_longest(*lists)) if p is not None]
    return _Splits(prompts, by_stratum, frozenset(test_keys), train_problems)


class ArithmeticTask:
    """The `arithmetic` task: see the module docstring for the problems and the gold score."""

    name = "arithmetic"
    max_prompt_tokens = 11  # "what is the difference of 9 9 and 9 9 :"
    max_response_tokens = 6  # the longest answer (3 digits) + `<eos>`, and 2 to spare
    test_problems = 6
    """Problems per operation and level held out of every training stage (`test`)."""
    eval_problems = 16
    """Problems per operation and level with one phrasing held out (`eval`)."""

    def __init__(self, demo_noise: DemoNoise | None = None):
        self.demo_noise = demo_noise or DemoNoise()
        splits = _make_splits(self.test_problems, self.eval_problems)  # built once a process
        self.splits: dict[str, list[str]] = splits.prompts
        self.test_keys = splits.test_keys
        """The problems of the `test` split (`Problem.key`): no training stage sees them."""
        self._by_stratum = splits.by_stratum
        self._train_problems = splits.train_problems

    def prompts(self, split: str = "train") -> list[str]:
        """Every prompt of a split, in a fixed order (the operations and levels take turns)."""
        if split not in self.splits:
            raise ValueError(f"unknown split {split!r}; valid: "
                             f"{', '.join(map(repr, self.splits))}")
        return list(self.splits[split])

    # ---- vocabulary and prompts ------------------------------------------------------
    def vocabulary(self) -> list[str]:
        words = list(DIGITS)
        for text in chain(*PHRASINGS.values(), *STATEMENTS.values()):
            words += [w for w in text.split() if w not in ("A", "B", "C")]
        return list(dict.fromkeys(words))  # unique, ordered

    @staticmethod
    def parse_prompt(prompt: str) -> Problem:
        """Read the problem back from a prompt; raises ValueError if it is not one (exactly
        a phrasing of PHRASINGS, operands in range, no negative difference)."""
        text = " ".join(prompt.split())
        for op, order, pattern in _PROMPT_PATTERNS:
            m = pattern.match(text)
            if m is None:
                continue
            # "subtract B from A" names B first
            numbers = {name: int(g.replace(" ", "")) for name, g in zip(order, m.groups())}
            a, b = numbers["A"], numbers["B"]
            if max(a, b) > MAX_OPERAND[op]:
                raise ValueError(f"{op} operands must be 0..{MAX_OPERAND[op]}: {prompt!r}")
            if op == "subtract" and a < b:
                raise ValueError(f"subtract problems have non-negative results: {prompt!r}")
            return Problem(op, a, b)
        raise ValueError(f"not an arithmetic prompt (expected e.g. 'what is 3 7 plus 4 8 :', "
                         f"operands as digit tokens): {prompt!r}")

    def sample_prompt(self, rng: np.random.Generator, split: str = "train") -> str:
        """The operation and the level uniformly, then a prompt of theirs in `split`."""
        if split not in self.splits:
            self.prompts(split)  # raises, listing the valid splits
        strata = sorted(s for s, out in self._by_stratum.items() if out[split])
        pool = self._by_stratum[strata[int(rng.integers(len(strata)))]][split]
        return pool[int(rng.integers(len(pool)))]

    # ---- writing answers ----------------------------------------------------------------
    def best_response(self, prompt: str, rng: np.random.Generator) -> str:
        return f"{digits(self.parse_prompt(prompt).answer)} {EOS_WORD}"

    def demonstration(self, prompt: str, rng: np.random.Generator) -> str:
        p = self.parse_prompt(prompt)
        noise = self.demo_noise
        u = rng.random()
        answer = p.answer
        for kind, rate in (("carry", noise.carry), ("off_by_one", noise.off_by_one),
                           ("swapped", noise.swapped),
                           ("wrong_operation", noise.wrong_operation)):
            if u < rate:
                answer = mistake(p, kind, rng)
                break
            u -= rate
        return f"{digits(answer)} {EOS_WORD}"

    def corpus(self, n: int, rng: np.random.Generator) -> list[str]:
        """Unconditioned documents: 1 to 3 statements ("3 7 plus 4 8 is 8 5 .") or, one time
        in four, a prompt and its answer. Never a test problem; 3% of answers are wrong."""
        strata = sorted(self._train_problems)
        docs = []
        for _ in range(n):
            problems = []
            for _ in range(int(rng.integers(1, 4))):
                pool = self._train_problems[strata[int(rng.integers(len(strata)))]]
                problems.append(pool[int(rng.integers(len(pool)))])
            answers = [mistake(p, str(rng.choice(MISTAKES)), rng)
                       if rng.random() < CORPUS_ERROR else p.answer for p in problems]
            if rng.random() < 0.25:
                p, c = problems[0], answers[0]
                template = PHRASINGS[p.op][int(rng.integers(len(PHRASINGS[p.op])))]
                docs.append(f"{_format(template, p)} {digits(c)} {EOS_WORD}")
                continue
            sentences = []
            for p, c in zip(problems, answers):
                template = STATEMENTS[p.op][int(rng.integers(len(STATEMENTS[p.op])))]
                sentences.append(_fill(template, A=p.a, B=p.b, C=c))
            docs.append(" ".join(sentences + [EOS_WORD]))
        return docs

    # ---- the gold scorer ----------------------------------------------------------------
    @staticmethod
    def read_answer(response: str) -> tuple[int | None, list[str], bool]:
        """(the number, its words, terminated by `<eos>`?). The number is None unless the
        words before `<eos>` are 1 to 3 digit tokens without a leading zero."""
        words = response.split()
        eos = EOS_WORD in words
        if eos:
            words = words[: words.index(EOS_WORD)]
        ok = (1 <= len(words) <= MAX_ANSWER_DIGITS and all(w in DIGITS for w in words)
              and (len(words) == 1 or words[0] != "0"))
        return (int("".join(words)) if ok else None), words, eos

    def gold_components(self, prompt: str, response: str) -> dict[str, float]:
        """The three components of the gold score (see the module docstring)."""
        answer = self.parse_prompt(prompt).answer
        number, words, eos = self.read_answer(response)
        value = 0.0
        if number == answer:
            value = 1.0
        elif number is not None and len(words) == len(str(answer)):
            right = sum(w == d for w, d in zip(words, str(answer)))
            value = NEAR_MISS * right / len(words)
        return {"format": 1.0 if number is not None else 0.0, "value": value,
                "eos": 1.0 if eos else CUT_OFF}

    def gold_score(self, prompt: str, response: str) -> float:
        score = 1.0
        for value in self.gold_components(prompt, response).values():
            score *= value
        return score


# ---- the demonstrators' mistakes ------------------------------------------------------------
MISTAKES = ("carry", "off_by_one", "swapped", "wrong_operation")


def mistake(p: Problem, kind: str, rng: np.random.Generator) -> int:
    """A wrong answer to `p` of the given kind (one of MISTAKES): never the right answer,
    never negative."""
    right = p.answer
    wrong = right
    if kind == "carry":
        wrong = _carry_slip(p, rng)
    elif kind == "swapped":
        s = str(right)
        pairs = [i for i in range(len(s) - 1) if s[i] != s[i + 1] and not (i == 0 and s[1] == "0")]
        if pairs:
            i = pairs[int(rng.integers(len(pairs)))]
            wrong = int(s[:i] + s[i + 1] + s[i] + s[i + 2:])
    elif kind == "wrong_operation":
        others = [_apply(op, p.a, p.b) for op in PHRASINGS if op != p.op
                  and not (op == "subtract" and p.a < p.b)]
        others = [o for o in others if o != right and o < 10 ** MAX_ANSWER_DIGITS]
        if others:
            wrong = others[int(rng.integers(len(others)))]
    elif kind != "off_by_one":
        raise ValueError(f"unknown mistake {kind!r}; valid: {', '.join(MISTAKES)}")
    if wrong == right or wrong < 0:  # off by one, or the fallback of the others
        wrong = _off_by_one(right, rng)
    return wrong


def _off_by_one(n: int, rng: np.random.Generator) -> int:
    """`n` with one digit one higher or lower (no leading zero, never `n` itself)."""
    s = str(n)
    options = set()
    for i, d in enumerate(s):
        for step in (-1, 1):
            e = int(d) + step
            if 0 <= e <= 9 and not (i == 0 and e == 0 and len(s) > 1):
                options.add(int(s[:i] + str(e) + s[i + 1:]))
    options = sorted(options)
    return options[int(rng.integers(len(options)))]


def _carry_slip(p: Problem, rng: np.random.Generator) -> int:
    """The answer with a carry or borrow gone wrong (see DemoNoise.carry)."""
    a, b = p.a, p.b
    if p.op == "add":
        no_carry = (a % 10 + b % 10) % 10 + 10 * ((a // 10 + b // 10) % 10)
        if a % 10 + b % 10 >= 10 or a // 10 + b // 10 >= 10:
            return no_carry  # the carries dropped (the hundreds too: 99 + 99 -> 88)
        return p.answer + 10  # a spurious carry
    if p.op == "subtract":
        if a % 10 < b % 10:  # smaller digit from the larger instead of borrowing
            return abs(a % 10 - b % 10) + 10 * (a // 10 - b // 10)
        return p.answer - 10  # a spurious borrow (negative: the caller falls back)
    if p.answer < 10 or rng.random() < 0.5:  # multiply: the tens one too high or too low
        return p.answer + 10
    return p.answer - 10


def _stable_fraction(text: str) -> float:
    """A number in [0, 1) fixed by `text` alone (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64
