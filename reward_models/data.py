"""Human-preference data on disk, as JSON Lines.

A reward model is trained from *comparisons*, not from absolute scores: a labeler
says which of several responses to the same prompt is better. We store two kinds
of record, one JSON object per line:

* pairwise  ``{"prompt": str, "chosen": str, "rejected": str}``
  -- one comparison: ``chosen`` was preferred over ``rejected``.
* ranked    ``{"prompt": str, "responses": [str, ...], "ranking": [int, ...]}``
  -- InstructGPT style: the labeler ranks K responses (2 <= K <= 9) at once.
  ``ranking[i]`` is the index into ``responses`` of the i-th best response, so
  ``ranking[0]`` is the best one. A ranking of K responses implies C(K, 2)
  pairwise comparisons (see :meth:`RankedRecord.to_pairs`).

Loading rules (why: silently dropping or "repairing" bad lines would make a
reward model train on something other than what the labelers said, and that is
very hard to notice later):

* A malformed line STOPS loading with :class:`PreferenceDataError`, whose message
  is ``"path:line: what is wrong"`` (line numbers are 1-based, like an editor).
  Nothing is returned in that case, not even the good lines before it.
* Blank (empty or whitespace-only) lines are skipped. They are the only thing
  skipped: a trailing newline at the end of a file or a blank line left while
  hand-editing a file is harmless and common.
* An empty file gives ``[]``. A missing file raises ``FileNotFoundError`` (naming
  the path), exactly like ``open``.
* A line may hold at most :data:`MAX_LINE_BYTES` bytes (1 MB, not counting its
  newline); a longer one is refused *before* it is parsed, and the file is read
  line by line, so a huge line cannot use huge amounts of memory. 1 MB is far more
  than any comparison a person can label (about 150,000 words).
* Also malformed: invalid UTF-8; a key repeated in one JSON object (``json``
  would silently keep the last value, so part of what the labeler wrote would be
  lost); JSON nested too deeply for Python's parser; a string that is not valid
  Unicode (a lone surrogate such as ``"\\ud800"``, which could not even be written
  back as UTF-8).

Every record read from a file remembers where it came from in ``record.source``
(``"path:line"``). Errors found later, e.g. a word the tokenizer does not know when
the records are encoded, should name that location: after blank lines or a
train/validation split, a record's index in a list is not its line in the file.

Allowed on purpose (documented, not errors):

* ``chosen == rejected`` in a pairwise record, and repeated strings among the
  responses of a ranked record. Sampling a policy several times for one prompt
  can produce identical texts. Such a pair adds a constant ``log 2`` to the
  pairwise loss and no gradient (the reward model must give both the same score),
  so it is harmless, and rejecting it would make generated data files fail to load.
* Empty strings as prompt or response (an empty response is a legal, if bad,
  output of a policy).
"""

from __future__ import annotations

import json
import os
import tempfile
from collections.abc import Iterable
from dataclasses import dataclass, field
from itertools import combinations

MIN_RESPONSES = 2  # fewer than 2 responses contain no comparison at all
MAX_RESPONSES = 9  # InstructGPT asked labelers to rank between 4 and 9 responses

MAX_LINE_BYTES = 1_000_000  # longest line we parse (bytes, newline not counted)

PAIRWISE_KEYS = frozenset({"prompt", "chosen", "rejected"})
RANKED_KEYS = frozenset({"prompt", "responses", "ranking"})

PathLike = str | os.PathLike[str]


def _type_name(value: object) -> str:
    """Name a value's type the way JSON users think of it (for error messages)."""
    names = {
        type(None): "null",
        bool: "bool",
        int: "int",
        float: "float",
        str: "str",
        list: "list",
        tuple: "list",
        dict: "object",
    }
    return names.get(type(value), type(value).__name__)


def _check_str(name: str, value: object) -> None:
    if not isinstance(value, str):
        raise TypeError(f"'{name}' must be a str, got {_type_name(value)}")
    # A Python str may hold lone surrogates (e.g. from the JSON escape "\ud800"),
    # which are not Unicode text: a tokenizer cannot handle them and the record could
    # not be written back as UTF-8. Encoding is the simplest complete check.
    try:
        value.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise ValueError(
            f"'{name}' is not valid Unicode: lone surrogate {value[exc.start]!r} "
            f"at index {exc.start}"
        ) from None


def _check_source(value: object) -> None:
    if value is not None and not isinstance(value, str):
        raise TypeError(f"'source' must be a str or None, got {_type_name(value)}")


@dataclass(frozen=True)
class PairwiseRecord:
    """One comparison: for ``prompt``, ``chosen`` was preferred over ``rejected``."""

    prompt: str
    chosen: str
    rejected: str
    # Where the record was read from, "path:line" (None for records made in code).
    # Bookkeeping for error messages, not data: keyword-only, left out of ==, hash()
    # and repr(), and never written by to_json(), so a record read back from a file
    # still equals the one that was written.
    source: str | None = field(default=None, compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        # Validate at construction so a bad record can never reach a training loop,
        # whether it came from a file or from code.
        _check_str("prompt", self.prompt)
        _check_str("chosen", self.chosen)
        _check_str("rejected", self.rejected)
        _check_source(self.source)

    def to_json(self) -> dict:
        return {"prompt": self.prompt, "chosen": self.chosen, "rejected": self.rejected}


@dataclass(frozen=True)
class RankedRecord:
    """K responses to one prompt, ranked best first by a labeler.

    ``ranking[i]`` is the index into ``responses`` of the i-th best response
    (``ranking[0]`` is the best). It must be a permutation of ``range(K)`` with
    ``2 <= K <= 9``.

    Lists passed in are stored as tuples, so a record is truly immutable (and
    hashable); ``RankedRecord(p, ["a", "b"], [1, 0])`` equals
    ``RankedRecord(p, ("a", "b"), (1, 0))``.

    ``source`` is ``"path:line"`` for a record read from a file (see the module
    docstring); the pairs of :meth:`to_pairs` inherit it.
    """

    prompt: str
    responses: tuple[str, ...]
    ranking: tuple[int, ...]
    source: str | None = field(default=None, compare=False, repr=False, kw_only=True)

    def __post_init__(self) -> None:
        _check_str("prompt", self.prompt)
        _check_source(self.source)

        # A bare str is a sequence too, but "abc" is certainly not 3 responses.
        if not isinstance(self.responses, (list, tuple)):
            raise TypeError(f"'responses' must be a list of str, got {_type_name(self.responses)}")
        for i, response in enumerate(self.responses):
            _check_str(f"responses[{i}]", response)
        k = len(self.responses)
        if not MIN_RESPONSES <= k <= MAX_RESPONSES:
            raise ValueError(
                f"'responses' must hold between {MIN_RESPONSES} and {MAX_RESPONSES} "
                f"responses, got {k}"
            )

        if not isinstance(self.ranking, (list, tuple)):
            raise TypeError(f"'ranking' must be a list of int, got {_type_name(self.ranking)}")
        for i, index in enumerate(self.ranking):
            # bool is a subclass of int in Python, but true/false is not an index.
            if not isinstance(index, int) or isinstance(index, bool):
                raise TypeError(f"'ranking[{i}]' must be an int, got {_type_name(index)}")
        if sorted(self.ranking) != list(range(k)):
            raise ValueError(
                f"'ranking' must be a permutation of range({k}) (one index per response, "
                f"best first), got {list(self.ranking)}"
            )

        # frozen=True forbids normal assignment; this is the documented escape hatch.
        object.__setattr__(self, "responses", tuple(self.responses))
        object.__setattr__(self, "ranking", tuple(self.ranking))

    @property
    def k(self) -> int:
        """Number of ranked responses."""
        return len(self.responses)

    def to_pairs(self) -> list[PairwiseRecord]:
        """All C(K, 2) implied comparisons, as (better, worse) pairs.

        Order: by rank of the better response, then rank of the worse one, i.e.
        (1st, 2nd), (1st, 3rd), ..., (1st, Kth), (2nd, 3rd), ..., ((K-1)th, Kth).
        """
        return [
            PairwiseRecord(
                prompt=self.prompt,
                chosen=self.responses[self.ranking[better]],
                rejected=self.responses[self.ranking[worse]],
                source=self.source,
            )
            for better, worse in combinations(range(self.k), 2)
        ]

    def to_json(self) -> dict:
        return {
            "prompt": self.prompt,
            "responses": list(self.responses),
            "ranking": list(self.ranking),
        }


PreferenceRecord = PairwiseRecord | RankedRecord


class PreferenceDataError(ValueError):
    """A preference file has a malformed line. Message: ``"path:line: reason"``.

    The pieces are also available as attributes ``path``, ``line`` and ``reason``.
    """

    def __init__(self, path: PathLike, line: int, reason: str) -> None:
        self.path = os.fspath(path)
        self.line = line
        self.reason = reason
        super().__init__(f"{self.path}:{line}: {reason}")

    def __reduce__(self):
        # Exceptions are pickled from self.args by default, which does not match
        # our __init__ signature; this keeps them picklable (e.g. across processes).
        return (type(self), (self.path, self.line, self.reason))


# --------------------------------------------------------------------- writing


def write_jsonl(path: PathLike, records: Iterable[PreferenceRecord]) -> None:
    """Write records, one JSON object per line, replacing ``path`` atomically.

    Why atomic: data files are often regenerated while something else may read
    them, and a crash halfway through must not leave a truncated file that loads
    "fine" with half the data. We write to a temporary file in the same directory
    (``os.replace`` is only atomic within one file system) and rename it over
    ``path`` at the end. If anything fails, ``path`` is left untouched.

    Pairwise and ranked records may be mixed; :func:`read_preferences` reads both.
    Non-ASCII text is written as UTF-8 (not ``\\uXXXX`` escapes) so files stay
    readable by people.
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp_path = tempfile.mkstemp(
        dir=directory, prefix="." + os.path.basename(path) + ".", suffix=".tmp"
    )
    try:
        with os.fdopen(fd, "w", encoding="utf-8", newline="\n") as f:
            for n, record in enumerate(records):
                if not isinstance(record, (PairwiseRecord, RankedRecord)):
                    raise TypeError(
                        f"record {n} is a {type(record).__name__}, "
                        "expected PairwiseRecord or RankedRecord"
                    )
                f.write(json.dumps(record.to_json(), ensure_ascii=False))
                f.write("\n")
            f.flush()
            os.fsync(f.fileno())
        # mkstemp creates files readable only by their owner; give the new file the
        # permissions of the one it replaces (or ordinary rw-r--r--).
        mode = os.stat(path).st_mode & 0o777 if os.path.exists(path) else 0o644
        os.chmod(tmp_path, mode)
        os.replace(tmp_path, path)
    except BaseException:
        try:
            os.unlink(tmp_path)
        except FileNotFoundError:
            pass
        raise


# --------------------------------------------------------------------- reading


class _BadLine(Exception):
    """Internal: the reason a line is malformed; turned into PreferenceDataError."""


def _quoted(keys: Iterable[str]) -> str:
    return ", ".join(repr(k) for k in sorted(keys))


def _detect_kind(obj: dict) -> str | None:
    """'pairwise', 'ranked' or None, judged by keys only the one kind has."""
    pair_hits = obj.keys() & {"chosen", "rejected"}
    rank_hits = obj.keys() & {"responses", "ranking"}
    if pair_hits and rank_hits:
        raise _BadLine(
            f"mixes pairwise keys ({_quoted(pair_hits)}) and ranked keys "
            f"({_quoted(rank_hits)}); a record is one or the other"
        )
    if pair_hits:
        return "pairwise"
    if rank_hits:
        return "ranked"
    return None


def _refuse_duplicate_keys(pairs: list[tuple[str, object]]) -> dict:
    """``object_pairs_hook`` for json.loads: build a dict, refusing repeated keys.

    Plain json.loads keeps the last of two equal keys without a word, so in
    ``{"prompt": "a", "prompt": "b", ...}`` one of the two texts would vanish.
    """
    obj: dict = {}
    for key, value in pairs:
        if key in obj:
            raise _BadLine(f"duplicate key {key!r} in a JSON object")
        obj[key] = value
    return obj


def _parse_line(text: str, expect: str | None, source: str) -> PreferenceRecord:
    """Turn one non-blank line into a record, or raise _BadLine saying why.

    ``expect`` is 'pairwise', 'ranked', or None (accept either, decided by keys).
    ``source`` ("path:line") is stored in the record.
    """
    try:
        obj = json.loads(text, object_pairs_hook=_refuse_duplicate_keys)
    except RecursionError:
        # The parser recurses once per nesting level; "[[[[...]]]]" thousands deep
        # exhausts Python's stack. No record is nested more than 2 levels.
        raise _BadLine("invalid JSON: nested too deeply") from None
    except ValueError as exc:
        # JSONDecodeError, and also the plain ValueError Python raises for an int
        # of more than 4300 digits (see sys.set_int_max_str_digits).
        raise _BadLine(f"invalid JSON: {exc}") from None
    if not isinstance(obj, dict):
        raise _BadLine(f"expected a JSON object, got {_type_name(obj)}")

    kind = _detect_kind(obj)
    if kind is None:
        if expect is None:
            raise _BadLine(
                "cannot tell the record kind: expected keys "
                f"{{{_quoted(PAIRWISE_KEYS)}}} or {{{_quoted(RANKED_KEYS)}}}, "
                f"got {{{_quoted(obj.keys())}}}"
            )
        kind = expect  # e.g. {"prompt": ...} only: report the missing keys below
    elif expect is not None and kind != expect:
        raise _BadLine(
            f"expected a {expect} record but found a {kind} record; "
            "use read_preferences() for files that mix both kinds"
        )

    expected_keys = PAIRWISE_KEYS if kind == "pairwise" else RANKED_KEYS
    missing = expected_keys - obj.keys()
    if missing:
        raise _BadLine(f"missing key {_quoted(missing)} for a {kind} record")
    extra = obj.keys() - expected_keys
    if extra:
        raise _BadLine(f"unexpected extra key {_quoted(extra)} in a {kind} record")

    try:
        if kind == "pairwise":
            return PairwiseRecord(obj["prompt"], obj["chosen"], obj["rejected"], source=source)
        return RankedRecord(obj["prompt"], obj["responses"], obj["ranking"], source=source)
    except (TypeError, ValueError) as exc:  # messages come from __post_init__
        raise _BadLine(str(exc)) from None


def _read_line(f, limit: int) -> bytes:
    """The next line of binary file ``f`` (b"" at the end), or _BadLine if too long.

    ``for raw in f`` would read a whole line into memory however long it is; asking
    for at most ``limit + 1`` bytes bounds memory. If that many bytes come back
    without a newline, the line holds more than ``limit`` bytes: we stop there, as
    the error ends loading anyway.
    """
    raw = f.readline(limit + 1)
    if len(raw) > limit and not raw.endswith(b"\n"):
        raise _BadLine(
            f"line is longer than the limit of {limit:,} bytes (MAX_LINE_BYTES); "
            "refused without parsing it"
        )
    return raw


def _load(path: PathLike, expect: str | None) -> list[PreferenceRecord]:
    records: list[PreferenceRecord] = []
    # Binary mode, split on b"\n" only: str.splitlines() would also split on
    # characters such as U+2028 that json.dumps(ensure_ascii=False) leaves unescaped
    # inside strings, and decoding line by line lets us report *where* a file is
    # not UTF-8.
    with open(path, "rb") as f:
        line_no = 0
        while True:
            line_no += 1  # physical line in the file: blank lines count too
            try:
                raw = _read_line(f, MAX_LINE_BYTES)
                if not raw:
                    break  # end of file
                try:
                    text = raw.decode("utf-8")
                except UnicodeDecodeError as exc:
                    raise _BadLine(f"not valid UTF-8: {exc}") from None
                if not text.strip():
                    continue  # blank lines are allowed (see module docstring)
                source = f"{os.fspath(path)}:{line_no}"
                records.append(_parse_line(text, expect, source))
            except _BadLine as exc:
                raise PreferenceDataError(path, line_no, str(exc)) from None
    return records


def read_pairwise(path: PathLike) -> list[PairwiseRecord]:
    """Read a file of pairwise records only (a ranked line is an error)."""
    return _load(path, "pairwise")  # type: ignore[return-value]


def read_ranked(path: PathLike) -> list[RankedRecord]:
    """Read a file of ranked records only (a pairwise line is an error)."""
    return _load(path, "ranked")  # type: ignore[return-value]


def read_preferences(path: PathLike) -> list[PreferenceRecord]:
    """Read a file that may mix both kinds; each line's kind is told by its keys."""
    return _load(path, None)


__all__ = [
    "MAX_LINE_BYTES",
    "MAX_RESPONSES",
    "MIN_RESPONSES",
    "PairwiseRecord",
    "PreferenceDataError",
    "PreferenceRecord",
    "RankedRecord",
    "read_pairwise",
    "read_preferences",
    "read_ranked",
    "write_jsonl",
]
