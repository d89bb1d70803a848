"""The `dialogue` task: a shop assistant finds what a customer wants, over several turns.

    prompt (customer): customer : i want a red phone .
    agent turn 1:      which size ? <eos>
    customer reply:    customer : small .
    agent turn 2:      try the small red phone . <eos>
    customer reply:    customer : yes thanks .             -> success, the episode ends

The customer has a hidden preference, one item of the shop (a SIZE, a COLOR and a KIND).
The opening line reveals one or two of the three attributes; the agent must ask about the
others and then recommend the item. Everything is written by a small grammar and a
scripted customer (no text from elsewhere).

The agent's turns
-----------------
A turn is the agent's tokens up to its `<eos>` (the end-of-turn token) or
`max_turn_tokens` tokens, whichever comes first; the env closes a turn cut off at the
limit with an `<eos>` of its own, so in the text every agent turn ends with `<eos>` and the
customer's reply follows it. A turn parses if it is exactly one of

    which ATTRIBUTE ?                     an open question (ATTRIBUTE: size, color, kind)
    is it VALUE ?                         a yes/no question (VALUE: any size, color or kind)
    try the SIZE COLOR KIND .             the recommendation, which ends the game

The customer (`user_reply`) answers truthfully and tersely: `customer : VALUE .` to an open
question, `customer : yes .` or `customer : no .` to a yes/no question, `customer : yes
thanks .` to the right recommendation (success) and `customer : no thanks .` to a wrong one
(failure: the customer leaves), and `customer : sorry ?` to a turn that does not parse.
The game also ends, unsuccessfully, after `max_turns` agent turns.

The gold score
--------------
`gold_score(prompt, transcript)` reads everything from the text (the customer's replies
carry the outcome), so the same function scores dialogues played in the env and those in
reward-model data. The transcript is what follows the prompt: agent turns and customer
replies, in order. It is the product of four components, each in [0, 1]
(`gold_components` returns them by name):

- success:  1 if the customer accepted the recommendation, else 0 (a wrong guess, the
            turn limit, or a dialogue cut off before the end);
- turns:    0.8 ** (agent turns - the fewest possible), the fewest being one question per
            attribute the opening line did not reveal, plus the recommendation: asking
            again what is known, a yes/no guess that fails, a turn the customer did not
            understand each cost a factor 0.8;
- grammar:  (fraction of the agent's turns that parse and that the customer understood)²;
- eos:      1 when every agent turn ended with the agent's `<eos>`, 0.5 when one was cut
            off (more than `max_turn_tokens` words with the env's `<eos>`, or a last turn
            with none because the dialogue ran out of room).

The perfect dialogue scores 1.0; a guess without asking succeeds only by luck.

Demonstrations (the SFT data) are whole dialogues played against the same customer by a
scripted shop assistant that makes mistakes at the rates of `DemoNoise`: it asks again
about what the customer already said, asks yes/no guesses, recommends before it knows
everything, and sometimes writes a turn that does not parse.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import numpy as np

EOS_WORD = "<eos>"
ROLE = "customer"  # every customer reply starts with "customer :"

ATTRIBUTES: dict[str, list[str]] = {
    "size": ["small", "large"],
    "color": ["black", "white", "red", "blue"],
    "kind": ["phone", "laptop", "watch", "camera", "speaker"],
}
ATTRIBUTE_OF: dict[str, str] = {v: a for a, vs in ATTRIBUTES.items() for v in vs}
OPENERS = ["i want", "i am looking for", "do you have"]
REPLIES = {"yes": "yes .", "no": "no .", "success": "yes thanks .", "failure": "no thanks .",
           "unclear": "sorry ?"}
FUNCTION_WORDS = ["customer", ":", "i", "want", "am", "looking", "for", "do", "you", "have",
                  "a", "something", ".", "?", "which", "is", "it", "try", "the", "yes", "no",
                  "thanks", "sorry", *ATTRIBUTES]
WASTED_TURN = 0.8  # the turns factor, per agent turn beyond the fewest possible
CUT_OFF = 0.5  # the eos factor when an agent turn was cut off (no `<eos>`)


@dataclass(frozen=True)
class Item:
    size: str
    color: str
    kind: str

    def value(self, attribute: str) -> str:
        return getattr(self, attribute)

    def words(self) -> str:
        return f"{self.size} {self.color} {self.kind}"


ITEMS = [Item(s, c, k) for k in ATTRIBUTES["kind"] for c in ATTRIBUTES["color"]
         for s in ATTRIBUTES["size"]]


@dataclass(frozen=True)
class Game:
    opener: str
    revealed: tuple[str, ...]  # the attributes the opening line says, in ATTRIBUTES order
    target: Item  # the hidden preference

    @property
    def prompt(self) -> str:
        return opening_line(self.opener, {a: self.target.value(a) for a in self.revealed})


def opening_line(opener: str, known: dict[str, str]) -> str:
    """`customer : i want a small phone .`, `customer : do you have something red ?`."""
    adjectives = " ".join(known[a] for a in ("size", "color") if a in known)
    thing = f"a {adjectives} {known['kind']}" if "kind" in known else f"something {adjectives}"
    end = "?" if opener == "do you have" else "."
    return " ".join(f"{ROLE} : {opener} {thing} {end}".split())


@dataclass
class DialogueState:
    """One game in progress: the hidden preference and what the agent has said so far."""
    target: Item
    known: dict[str, str]  # attribute -> value the opening line revealed
    turns: list[str] = field(default_factory=list)  # the agent's turns so far


@dataclass(frozen=True)
class DemoNoise:
    """Rates of the scripted shop assistant's mistakes in demonstrations."""
    ask_known: float = 0.12  # per turn: ask about an attribute the customer already gave
    yes_no: float = 0.25  # per question: a yes/no guess instead of an open question
    guess_early: float = 0.15  # per turn: recommend before every attribute is known
    ungrammatical: float = 0.05  # per turn: a turn that does not parse


@dataclass(frozen=True)
class Turn:
    """A parsed agent turn: an open question, a yes/no question or a recommendation."""
    act: str  # "which" | "is" | "try"
    attribute: str = ""  # for "which"
    value: str = ""  # for "is"
    item: Item | None = None  # for "try"


class DialogueTask:
    """The `dialogue` task (see the module docstring). Multi-turn: the env asks
    `new_dialogue` for a hidden state at reset and `user_reply` for the customer's answer
    after every agent turn."""

    name = "dialogue"
    max_turns = 5
    """Agent turns before the game ends without success."""
    max_turn_tokens = 7
    """Longest agent turn, `<eos>` included (`try the small red phone . <eos>`)."""
    max_reply_tokens = 5
    """Longest customer reply (`customer : yes thanks .`)."""
    max_prompt_tokens = 10
    max_response_tokens = max_turns * (max_turn_tokens + 1 + max_reply_tokens)
    """Room for max_turns full turns (+ the `<eos>` the env adds to a cut-off one) and
    replies: the whole dialogue after the prompt."""

    def __init__(self, demo_noise: DemoNoise | None = None, test_fraction: float = 0.15,
                 eval_fraction: float = 0.15):
        self.demo_noise = demo_noise or DemoNoise()
        # Games: every opener x every revealed subset of one or two attributes x every item.
        # Splits by a stable hash: `test` holds every game of 15% of the items (hidden
        # preferences no training stage ever met); `eval` 15% of the other games; `train`
        # the rest. The same opening line can start games of several splits (its hidden
        # completion differs), so a split is a list of games, and `prompts(split)` its
        # distinct opening lines.
        subsets = [(a,) for a in ATTRIBUTES] + [(a, b) for i, a in enumerate(ATTRIBUTES)
                                                for b in list(ATTRIBUTES)[i + 1:]]
        self.games: dict[str, list[Game]] = {"train": [], "eval": [], "test": []}
        for item in ITEMS:
            test = _stable_fraction("test " + item.words()) < test_fraction
            for opener in OPENERS:
                for revealed in subsets:
                    game = Game(opener, revealed, item)
                    split = "test" if test else (
                        "eval" if _stable_fraction("eval " + game.prompt + item.words())
                        < eval_fraction else "train")
                    self.games[split].append(game)

    # ---- vocabulary, prompts and games -------------------------------------------------
    def vocabulary(self) -> list[str]:
        words = FUNCTION_WORDS + [v for vs in ATTRIBUTES.values() for v in vs]
        return list(dict.fromkeys(words))

    def _check_split(self, split: str) -> None:
        if split not in self.games:
            raise ValueError(f"unknown split {split!r}; valid: {', '.join(map(repr, self.games))}")

    def prompts(self, split: str = "train") -> list[str]:
        """The distinct opening lines of a split's games, in a fixed order."""
        self._check_split(split)
        return list(dict.fromkeys(g.prompt for g in self.games[split]))

    def sample_prompt(self, rng: np.random.Generator, split: str = "train") -> str:
        """The opening line of a game of `split` drawn uniformly (`new_dialogue` then draws
        its hidden preference among the split's games with that opening)."""
        self._check_split(split)
        games = self.games[split]
        return games[int(rng.integers(len(games)))].prompt

    @staticmethod
    def parse_prompt(prompt: str) -> dict[str, str]:
        """The attributes an opening line reveals; ValueError if it is not one."""
        words = prompt.split()
        known: dict[str, str] = {}
        for w in words:
            if w in ATTRIBUTE_OF:
                known[ATTRIBUTE_OF[w]] = w
        ok = False
        for opener in OPENERS:
            if 1 <= len(known) <= 2 and prompt == opening_line(opener, known):
                ok = True
        if not ok:
            raise ValueError(f"not a dialogue opening line (expected e.g. "
                             f"'{opening_line(OPENERS[0], {'color': 'red', 'kind': 'phone'})}'"
                             f"): {prompt!r}")
        return known

    def new_dialogue(self, prompt: str, rng: np.random.Generator,
                     split: str = "train") -> DialogueState:
        """The hidden state of a game opened by `prompt`: a preference drawn with `rng`
        among the games of `split` that open so (any item that fits, for another line)."""
        known = self.parse_prompt(prompt)
        self._check_split(split)
        targets = [g.target for g in self.games[split] if g.prompt == prompt]
        if not targets:
            targets = [it for it in ITEMS if all(it.value(a) == v for a, v in known.items())]
        return DialogueState(targets[int(rng.integers(len(targets)))], dict(known))

    # ---- the simulated customer -----------------------------------------------------------
    @staticmethod
    def parse_turn(words: list[str]) -> Turn | None:
        """An agent turn's words (without `<eos>`) -> Turn, or None if it does not parse."""
        n = len(words)
        if n == 3 and words[0] == "which" and words[1] in ATTRIBUTES and words[2] == "?":
            return Turn("which", attribute=words[1])
        if n == 4 and words[:2] == ["is", "it"] and words[2] in ATTRIBUTE_OF and words[3] == "?":
            return Turn("is", value=words[2])
        if (n == 6 and words[:2] == ["try", "the"] and words[5] == "."
                and words[2] in ATTRIBUTES["size"] and words[3] in ATTRIBUTES["color"]
                and words[4] in ATTRIBUTES["kind"]):
            return Turn("try", item=Item(*words[2:5]))
        return None

    def user_reply(self, state: DialogueState, turn: str) -> tuple[str, str | None]:
        """The customer's reply to the agent's `turn` (its text, `<eos>` included if it
        ended so) and the outcome: "success", "failure" or None (the game goes on).
        Appends the turn to `state.turns`."""
        state.turns.append(turn)
        words = turn.split()
        if EOS_WORD not in words:  # cut off: the customer did not understand
            return f"{ROLE} : {REPLIES['unclear']}", None
        parsed = self.parse_turn(words[:words.index(EOS_WORD)])
        if parsed is None:
            key, outcome = "unclear", None
        elif parsed.act == "which":
            return f"{ROLE} : {state.target.value(parsed.attribute)} .", None
        elif parsed.act == "is":
            key, outcome = ("yes" if state.target.value(ATTRIBUTE_OF[parsed.value])
                            == parsed.value else "no"), None
        else:
            key = outcome = "success" if parsed.item == state.target else "failure"
        return f"{ROLE} : {REPLIES[key]}", outcome

    # ---- demonstrations, corpus ---------------------------------------------------------
    def _assistant_turn(self, known: dict[str, str], asked: set[str], rng: np.random.Generator,
                        noise: DemoNoise | None, target: Item) -> str:
        """The scripted shop assistant's next turn; perfect when `noise` is None."""
        unknown = [a for a in ATTRIBUTES if a not in known]
        if noise is not None and rng.random() < noise.ungrammatical:
            bad = [f"which {rng.choice(ATTRIBUTES['color'])} ?", "is it ?",
                   f"try the {rng.choice(ATTRIBUTES['kind'])} .",
                   f"which {rng.choice(list(ATTRIBUTES))} ."]
            return str(rng.choice(bad))
        if noise is not None and known and rng.random() < noise.ask_known:
            return f"which {rng.choice(list(known))} ?"
        if not unknown or (noise is not None and rng.random() < noise.guess_early):
            guess = {a: known.get(a) or str(rng.choice(ATTRIBUTES[a])) for a in ATTRIBUTES}
            return f"try the {guess['size']} {guess['color']} {guess['kind']} ."
        attribute = unknown[0] if noise is None else str(rng.choice(unknown))
        if noise is not None and rng.random() < noise.yes_no:
            options = [v for v in ATTRIBUTES[attribute] if v not in asked]
            value = str(rng.choice(options or ATTRIBUTES[attribute]))
            asked.add(value)
            return f"is it {value} ?"
        return f"which {attribute} ?"

    def play(self, prompt: str, rng: np.random.Generator, noise: DemoNoise | None,
             state: DialogueState | None = None) -> str:
        """A whole dialogue after `prompt` played by the scripted assistant against the
        customer (hidden preference drawn with `rng` unless `state` is given): the
        transcript, agent turns ending with `<eos>` and customer replies in between."""
        state = state or self.new_dialogue(prompt, rng)
        known, asked = dict(state.known), set()
        parts = []
        for _ in range(self.max_turns):
            turn = self._assistant_turn(known, asked, rng, noise, state.target) + f" {EOS_WORD}"
            reply, outcome = self.user_reply(state, turn)
            parts += [turn, reply]
            parsed = self.parse_turn(turn.split()[:-1])
            answer = reply.split()[2]
            if parsed is not None and parsed.act == "which":
                known[parsed.attribute] = answer
            elif parsed is not None and parsed.act == "is" and answer == "yes":
                known[ATTRIBUTE_OF[parsed.value]] = parsed.value
            elif parsed is not None and parsed.act == "is":
                rest = [v for v in ATTRIBUTES[ATTRIBUTE_OF[parsed.value]] if v not in asked]
                if len(rest) == 1:  # every other value was ruled out
                    known[ATTRIBUTE_OF[parsed.value]] = rest[0]
            if outcome is not None:
                break
        return " ".join(parts)

    def demonstration(self, prompt: str, rng: np.random.Generator) -> str:
        """An imperfect whole dialogue (see `DemoNoise`)."""
        return self.play(prompt, rng, self.demo_noise)

    def best_response(self, prompt: str, rng: np.random.Generator) -> str:
        """The perfect dialogue: one open question per unknown attribute, then the item."""
        return self.play(prompt, rng, None)

    def corpus(self, n: int, rng: np.random.Generator) -> list[str]:
        """Unconditioned dialogues played with about twice the demonstrators' mistakes."""
        sloppy = DemoNoise(ask_known=0.25, yes_no=0.4, guess_early=0.3, ungrammatical=0.1)
        docs = []
        for _ in range(n):
            game = self.games["train"][int(rng.integers(len(self.games["train"])))]
            state = DialogueState(game.target, {a: game.target.value(a) for a in game.revealed})
            docs.append(f"{game.prompt} {self.play(game.prompt, rng, sloppy, state)}")
        return docs

    # ---- the gold scorer ----------------------------------------------------------------
    @staticmethod
    def split_transcript(transcript: str) -> list[tuple[str, str]]:
        """The transcript's turns in order, as (role, text) with role "agent" or "user".
        An agent turn is its words up to and including `<eos>` (the rest of the text if it
        has none); the customer's reply follows, up to and including its `.` or `?`."""
        words = transcript.split()
        turns: list[tuple[str, str]] = []
        i = 0
        while i < len(words):
            j = words.index(EOS_WORD, i) + 1 if EOS_WORD in words[i:] else len(words)
            turns.append(("agent", " ".join(words[i:j])))
            i = j
            if i < len(words):
                j = i
                while j < len(words) - 1 and words[j] not in (".", "?"):
                    j += 1
                turns.append(("user", " ".join(words[i:j + 1])))
                i = j + 1
        return turns

    def gold_components(self, prompt: str, transcript: str) -> dict[str, float]:
        """The four components of the gold score, each in [0, 1] (see the module docstring)."""
        known = self.parse_prompt(prompt)
        turns = self.split_transcript(transcript)
        agent = [t for role, t in turns if role == "agent"]
        last_reply = next((t for role, t in reversed(turns) if role == "user"), "")
        success = float(bool(turns) and turns[-1][0] == "user"
                        and last_reply == f"{ROLE} : {REPLIES['success']}")
        fewest = len(ATTRIBUTES) - len(known) + 1
        wasted = max(0, len(agent) - fewest)
        ended = [t.split()[-1:] == [EOS_WORD] and len(t.split()) <= self.max_turn_tokens
                 for t in agent]  # by the agent's own <eos>
        replies = [t for role, t in turns if role == "user"] + [""]  # "": no reply (yet)
        parsed = [e and self.parse_turn(t.split()[:-1]) is not None
                  and reply != f"{ROLE} : {REPLIES['unclear']}"
                  for t, e, reply in zip(agent, ended, replies)]
        grammar = (sum(parsed) / len(agent)) ** 2 if agent else 0.0
        return {"success": success, "turns": WASTED_TURN ** wasted, "grammar": grammar,
                "eos": 1.0 if all(ended) else CUT_OFF}

    def gold_score(self, prompt: str, transcript: str) -> float:
        score = 1.0
        for value in self.gold_components(prompt, transcript).values():
            score *= value
        return score

    def agent_mask(self, transcript: str) -> list[bool]:
        """Per word of `transcript`: True on the agent's words (SFT targets), False on the
        customer's (context)."""
        return [role == "agent" for role, text in self.split_transcript(transcript)
                for _ in text.split()]


def _stable_fraction(text: str) -> float:
    """A number in [0, 1) fixed by `text` alone (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "big") / 2**64
