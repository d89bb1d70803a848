"""Tests for preference data on disk (reward_models.data) and the simulated labeler."""

from __future__ import annotations

import json
import math
import os
import re
import tracemalloc
from itertools import combinations, pairwise

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from reward_models import data
from reward_models.data import (
    PairwiseRecord,
    PreferenceDataError,
    RankedRecord,
    read_pairwise,
    read_preferences,
    read_ranked,
    write_jsonl,
)
from reward_models.labeler import bradley_terry_ranking, label_rankings

PAIR_A = PairwiseRecord("What is 2+2?", "4", "5")
PAIR_B = PairwiseRecord("Say hi", "hi", "hi")  # chosen == rejected is allowed
RANKED_A = RankedRecord("Name a colour", ("red", "blue", "seven"), (1, 0, 2))
RANKED_B = RankedRecord("Count", ("1 2 3", "1 2", "1", "3 2 1"), (0, 1, 2, 3))


def _line(record) -> bytes:
    return (json.dumps(record.to_json()) + "\n").encode()


# ------------------------------------------------------------------ round trips


def test_round_trip_pairwise(tmp_path):
    path = tmp_path / "pairs.jsonl"
    write_jsonl(path, [PAIR_A, PAIR_B])
    assert read_pairwise(path) == [PAIR_A, PAIR_B]
    assert read_preferences(path) == [PAIR_A, PAIR_B]


def test_round_trip_ranked(tmp_path):
    path = tmp_path / "ranked.jsonl"
    write_jsonl(path, [RANKED_A, RANKED_B])
    assert read_ranked(path) == [RANKED_A, RANKED_B]
    assert read_preferences(path) == [RANKED_A, RANKED_B]


def test_round_trip_mixed_keeps_order(tmp_path):
    path = tmp_path / "mixed.jsonl"
    records = [RANKED_A, PAIR_A, RANKED_B, PAIR_B]
    write_jsonl(path, records)
    assert read_preferences(path) == records


def test_file_format_is_one_object_per_line(tmp_path):
    path = tmp_path / "x.jsonl"
    write_jsonl(path, [PAIR_A, RANKED_A])
    lines = path.read_text(encoding="utf-8").splitlines()
    assert [json.loads(line) for line in lines] == [
        {"prompt": "What is 2+2?", "chosen": "4", "rejected": "5"},
        {"prompt": "Name a colour", "responses": ["red", "blue", "seven"], "ranking": [1, 0, 2]},
    ]


def test_round_trip_awkward_text(tmp_path):
    # Newlines, quotes, non-ASCII, and U+2028 (a "line separator" that
    # str.splitlines() would split on) must survive.
    weird = 'line 1\nline 2\r\n "quoted" \\ é 漢字 \u2028 \u2029 \x00 end'
    records = [PairwiseRecord(weird, weird + "!", ""), RankedRecord("", (weird, ""), (1, 0))]
    path = tmp_path / "weird.jsonl"
    write_jsonl(path, records)
    assert read_preferences(path) == records


text = st.text(max_size=20)
pairwise_records = st.builds(PairwiseRecord, text, text, text)


@st.composite
def ranked_records(draw):
    k = draw(st.integers(2, 9))
    responses = draw(st.lists(text, min_size=k, max_size=k))
    ranking = draw(st.permutations(list(range(k))))
    return RankedRecord(draw(text), responses, ranking)


@settings(max_examples=50, deadline=None)
@given(records=st.lists(st.one_of(pairwise_records, ranked_records()), max_size=5))
def test_round_trip_property(tmp_path_factory, records):
    path = tmp_path_factory.mktemp("rt") / "data.jsonl"
    write_jsonl(path, records)
    assert read_preferences(path) == records


def test_empty_file_gives_empty_list(tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_bytes(b"")
    assert read_preferences(path) == []
    assert read_pairwise(path) == []
    assert read_ranked(path) == []
    write_jsonl(path, [])
    assert path.read_bytes() == b""
    assert read_preferences(path) == []


def test_blank_lines_are_skipped(tmp_path):
    path = tmp_path / "blanks.jsonl"
    path.write_bytes(b"\n" + _line(PAIR_A) + b"   \n\t\r\n" + _line(PAIR_B) + b"\n\n")
    assert read_pairwise(path) == [PAIR_A, PAIR_B]


def test_blank_lines_still_count_for_line_numbers(tmp_path):
    path = tmp_path / "blanks_then_bad.jsonl"
    path.write_bytes(_line(PAIR_A) + b"\n\n" + b"not json\n")
    with pytest.raises(PreferenceDataError) as info:
        read_pairwise(path)
    assert f"{path}:4:" in str(info.value)
    assert info.value.line == 4


def test_missing_file_names_the_path(tmp_path):
    path = tmp_path / "does_not_exist.jsonl"
    with pytest.raises(FileNotFoundError, match="does_not_exist.jsonl"):
        read_preferences(path)


# ------------------------------------------------------------- malformed lines

# (id, kind of the good lines before it, bad line, fragment expected in the message)
MALFORMED = [
    ("invalid_json", "pairwise", b'{"prompt": "p", "chosen": ', "invalid JSON"),
    (
        "trailing_garbage",
        "pairwise",
        b'{"prompt": "p", "chosen": "a", "rejected": "b"} x',
        "invalid JSON",
    ),
    (
        "not_utf8",
        "pairwise",
        b'{"prompt": "\xff", "chosen": "a", "rejected": "b"}',
        "not valid UTF-8",
    ),
    ("array", "pairwise", b'["p", "a", "b"]', "expected a JSON object, got list"),
    ("string", "ranked", b'"hello"', "expected a JSON object, got str"),
    ("null", "ranked", b"null", "expected a JSON object, got null"),
    ("missing_rejected", "pairwise", b'{"prompt": "p", "chosen": "a"}', "missing key 'rejected'"),
    ("missing_prompt", "pairwise", b'{"chosen": "a", "rejected": "b"}', "missing key 'prompt'"),
    (
        "missing_ranking",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b"]}',
        "missing key 'ranking'",
    ),
    (
        "extra_key_pairwise",
        "pairwise",
        b'{"prompt": "p", "chosen": "a", "rejected": "b", "score": 1}',
        "unexpected extra key 'score'",
    ),
    (
        "extra_key_ranked",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1], "labeler": "x"}',
        "unexpected extra key 'labeler'",
    ),
    (
        "mixed_kinds",
        "pairwise",
        b'{"prompt": "p", "chosen": "a", "rejected": "b", "ranking": [0, 1]}',
        "mixes pairwise keys",
    ),
    (
        "prompt_not_str",
        "pairwise",
        b'{"prompt": 3, "chosen": "a", "rejected": "b"}',
        "'prompt' must be a str, got int",
    ),
    (
        "chosen_null",
        "pairwise",
        b'{"prompt": "p", "chosen": null, "rejected": "b"}',
        "'chosen' must be a str, got null",
    ),
    (
        "rejected_list",
        "pairwise",
        b'{"prompt": "p", "chosen": "a", "rejected": ["b"]}',
        "'rejected' must be a str, got list",
    ),
    (
        "ranked_prompt_not_str",
        "ranked",
        b'{"prompt": {}, "responses": ["a", "b"], "ranking": [0, 1]}',
        "'prompt' must be a str",
    ),
    (
        "responses_is_str",
        "ranked",
        b'{"prompt": "p", "responses": "ab", "ranking": [0, 1]}',
        "'responses' must be a list",
    ),
    (
        "response_not_str",
        "ranked",
        b'{"prompt": "p", "responses": ["a", 2], "ranking": [0, 1]}',
        "'responses[1]' must be a str",
    ),
    (
        "no_responses",
        "ranked",
        b'{"prompt": "p", "responses": [], "ranking": []}',
        "between 2 and 9 responses, got 0",
    ),
    ("one_response", "ranked", b'{"prompt": "p", "responses": ["a"], "ranking": [0]}', "got 1"),
    (
        "ten_responses",
        "ranked",
        json.dumps(
            {"prompt": "p", "responses": list("abcdefghij"), "ranking": list(range(10))}
        ).encode(),
        "got 10",
    ),
    (
        "ranking_not_list",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": 0}',
        "'ranking' must be a list",
    ),
    (
        "ranking_float",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [0.0, 1]}',
        "'ranking[0]' must be an int",
    ),
    (
        "ranking_bool",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [false, true]}',
        "'ranking[0]' must be an int",
    ),
    (
        "ranking_repeat",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 0, 1]}',
        "permutation of range(3)",
    ),
    (
        "ranking_short",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b", "c"], "ranking": [0, 1]}',
        "permutation of range(3)",
    ),
    (
        "ranking_long",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [0, 1, 2]}',
        "permutation of range(2)",
    ),
    (
        "ranking_one_based",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [1, 2]}',
        "permutation of range(2)",
    ),
    (
        "ranking_negative",
        "ranked",
        b'{"prompt": "p", "responses": ["a", "b"], "ranking": [-1, 0]}',
        "permutation of range(2)",
    ),
]

SPECIFIC_READER = {"pairwise": read_pairwise, "ranked": read_ranked}
GOOD_LINES = {
    "pairwise": _line(PAIR_A) + _line(PAIR_B),
    "ranked": _line(RANKED_A) + _line(RANKED_B),
}


@pytest.mark.parametrize("reader_kind", ["specific", "any"])
@pytest.mark.parametrize(
    ("case", "kind", "bad", "fragment"), MALFORMED, ids=[m[0] for m in MALFORMED]
)
def test_malformed_line_stops_loading(tmp_path, reader_kind, case, kind, bad, fragment):
    path = tmp_path / f"{case}.jsonl"
    # Two good lines, the bad one on line 3, then a good line that must not be read.
    path.write_bytes(
        GOOD_LINES[kind] + bad + b"\n" + _line(PAIR_A if kind == "pairwise" else RANKED_A)
    )
    reader = SPECIFIC_READER[kind] if reader_kind == "specific" else read_preferences

    result = None
    with pytest.raises(PreferenceDataError) as info:
        result = reader(path)
    assert result is None  # no partial result
    message = str(info.value)
    assert message.startswith(f"{path}:3: "), message
    assert fragment in message, message
    assert info.value.line == 3 and info.value.path == str(path)
    assert isinstance(info.value, ValueError)


def test_bad_line_without_trailing_newline(tmp_path):
    path = tmp_path / "last.jsonl"
    path.write_bytes(_line(PAIR_A) + b'{"prompt": 1')
    with pytest.raises(PreferenceDataError, match=r"last\.jsonl:2: invalid JSON"):
        read_preferences(path)


def test_record_without_kind_keys(tmp_path):
    path = tmp_path / "kindless.jsonl"
    path.write_bytes(_line(PAIR_A) + b'{"prompt": "p"}\n')
    with pytest.raises(
        PreferenceDataError, match=r"kindless\.jsonl:2: cannot tell the record kind"
    ):
        read_preferences(path)
    # A reader that knows what to expect can name the missing keys instead.
    with pytest.raises(PreferenceDataError, match=r":2: missing key 'chosen', 'rejected'"):
        read_pairwise(path)
    path.write_bytes(_line(RANKED_A) + b'{"prompt": "p"}\n')
    with pytest.raises(PreferenceDataError, match=r":2: missing key 'ranking', 'responses'"):
        read_ranked(path)


def test_specific_reader_rejects_other_kind(tmp_path):
    path = tmp_path / "mixed.jsonl"
    write_jsonl(path, [PAIR_A, RANKED_A])
    with pytest.raises(PreferenceDataError, match=r"mixed\.jsonl:2: expected a pairwise record"):
        read_pairwise(path)
    with pytest.raises(PreferenceDataError, match=r"mixed\.jsonl:1: expected a ranked record"):
        read_ranked(path)


def test_error_carries_file_line_and_reason():
    err = PreferenceDataError("f.jsonl", 3, "bad")
    assert str(err) == "f.jsonl:3: bad"
    assert (err.path, err.line, err.reason) == ("f.jsonl", 3, "bad")


# ------------------------------------------- every error names file:line (hardening)


def _expect_error_at(path, line, fragment, reader=read_preferences):
    """Loading `path` stops with a PreferenceDataError at `line` mentioning `fragment`."""
    with pytest.raises(PreferenceDataError) as info:
        reader(path)
    message = str(info.value)
    assert message.startswith(f"{path}:{line}: "), message
    assert fragment in message, message
    assert (info.value.path, info.value.line) == (str(path), line)
    return info.value


def test_records_remember_their_file_and_line(tmp_path):
    # Errors found after loading (an unknown word when a record is encoded) must name
    # file:line, not "record N": with blank lines, or after a train/val split, the
    # index of a record in a list is not its line in the file.
    path = tmp_path / "src.jsonl"
    path.write_bytes(b"\n" + _line(PAIR_A) + b"\n  \n" + _line(RANKED_A) + _line(PAIR_B))
    records = read_preferences(path)
    assert [r.source for r in records] == [f"{path}:2", f"{path}:5", f"{path}:6"]
    # The location is bookkeeping, not data: equality, hashing and the file format
    # ignore it, so a round trip still compares equal.
    assert records == [PAIR_A, RANKED_A, PAIR_B]
    assert hash(records[0]) == hash(PAIR_A)
    assert records[1].to_json() == RANKED_A.to_json()
    # Pairs implied by a ranking come from the same line.
    assert {p.source for p in records[1].to_pairs()} == {f"{path}:5"}
    # Records made in code have no file.
    assert PAIR_A.source is None and RANKED_A.to_pairs()[0].source is None


class _VocabularyRM:
    """Stands in for a RewardModel: `encode` refuses words outside a small vocabulary."""

    vocabulary = frozenset({"hi", "4", "5", "red", "blue", "seven"})

    def encode(self, prompts, responses):
        for text in responses:
            for word in text.split():
                if word not in self.vocabulary:
                    raise ValueError(f"unknown word {word!r}")
        return [[0] for _ in responses]


def test_unknown_word_error_names_file_and_line(tmp_path):
    from reward_models.train import encode_records

    path = tmp_path / "vocab.jsonl"
    bad = PairwiseRecord("Say hi", "hi", "zebra")
    path.write_bytes(_line(PAIR_B) + b"\n\n" + _line(bad))
    records = read_pairwise(path)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:4 .*unknown word 'zebra'"):
        encode_records(_VocabularyRM(), records)
    # The same after a split that drops the first record: the bad one is now index 0.
    with pytest.raises(ValueError, match=rf"^{re.escape(str(path))}:4 "):
        encode_records(_VocabularyRM(), records[1:])


def test_deeply_nested_json_is_a_located_error(tmp_path):
    path = tmp_path / "deep.jsonl"
    depth = 100_000
    path.write_bytes(_line(PAIR_A) + b"[" * depth + b"]" * depth + b"\n")
    _expect_error_at(path, 2, "nested too deeply")
    # Also inside an object, where a string field was expected.
    path.write_bytes(
        b'{"prompt": ' + b"[" * depth + b"]" * depth + b', "chosen": "a", "rejected": "b"}\n'
    )
    _expect_error_at(path, 1, "nested too deeply")


def test_duplicate_key_is_refused(tmp_path):
    # json.loads would silently keep the last value: the labeler's data would be
    # half-lost without anybody noticing.
    path = tmp_path / "dup.jsonl"
    path.write_bytes(
        _line(PAIR_A) + b'{"prompt": "a", "prompt": "b", "chosen": "c", "rejected": "d"}\n'
    )
    _expect_error_at(path, 2, "duplicate key 'prompt'")
    _expect_error_at(path, 2, "duplicate key 'prompt'", read_pairwise)
    # Also in a nested object (it would be refused later anyway, but say the real reason).
    path.write_bytes(b'{"prompt": {"x": 1, "x": 2}, "chosen": "c", "rejected": "d"}\n')
    _expect_error_at(path, 1, "duplicate key 'x'")


def test_huge_integer_is_a_located_error(tmp_path):
    # Python refuses to convert ints of more than 4300 digits with a plain ValueError
    # (not a JSONDecodeError); it is still a malformed line.
    path = tmp_path / "bigint.jsonl"
    path.write_bytes(
        _line(RANKED_A) + b'{"prompt": "p", "responses": ["a", "b"], "ranking": [0, '
        + b"1" * 5000 + b"]}\n"
    )
    _expect_error_at(path, 2, "invalid JSON")


def test_lone_surrogate_escape_is_refused(tmp_path):
    # "\ud800" is valid JSON and valid UTF-8 on disk, but the string it makes is not
    # valid Unicode: it could not even be written back as UTF-8.
    path = tmp_path / "surrogate.jsonl"
    path.write_bytes(_line(PAIR_A) + b'{"prompt": "p", "chosen": "a\\ud800", "rejected": "b"}\n')
    _expect_error_at(path, 2, "'chosen' is not valid Unicode")
    with pytest.raises(ValueError, match="not valid Unicode"):
        RankedRecord("p", ("a", "\udfff"), (0, 1))


def test_invalid_utf8_names_file_and_line(tmp_path):
    path = tmp_path / "latin1.jsonl"
    path.write_bytes(_line(PAIR_A) + b"\n" + '{"prompt": "café"}\n'.encode("latin-1"))
    _expect_error_at(path, 3, "not valid UTF-8")
    # A stray byte on an otherwise blank line is not blank.
    path.write_bytes(_line(PAIR_A) + b"  \xff \n")
    _expect_error_at(path, 2, "not valid UTF-8")


def _pair_line_of_length(n: int) -> bytes:
    """A valid pairwise line of exactly `n` bytes, not counting its newline."""
    line = _line(PairwiseRecord("", "a", "b"))[:-1]
    padded = line.replace(b'"prompt": ""', b'"prompt": "' + b"x" * (n - len(line)) + b'"')
    assert len(padded) == n
    return padded + b"\n"


def test_line_length_limit_is_exact(tmp_path, monkeypatch):
    monkeypatch.setattr(data, "MAX_LINE_BYTES", 200)
    path = tmp_path / "limit.jsonl"
    path.write_bytes(_line(PAIR_A) + _pair_line_of_length(200))  # at the limit: fine
    assert len(read_pairwise(path)) == 2
    path.write_bytes(_pair_line_of_length(200)[:-1])  # no final newline: fine too
    assert len(read_pairwise(path)) == 1
    path.write_bytes(_line(PAIR_A) + _pair_line_of_length(201) + _line(PAIR_B))
    _expect_error_at(path, 2, "longer than the limit of 200 bytes")
    path.write_bytes(_pair_line_of_length(201)[:-1])
    _expect_error_at(path, 1, "longer than the limit of 200 bytes")


def test_huge_line_is_refused_before_parsing_in_bounded_memory(tmp_path):
    assert data.MAX_LINE_BYTES == 1_000_000  # documented in the module docstring
    path = tmp_path / "huge.jsonl"
    size = 8 * data.MAX_LINE_BYTES
    # The huge line is also invalid JSON: being told it is too long (not that it is
    # invalid JSON) shows it was refused before being parsed.
    path.write_bytes(_line(PAIR_A) + b'{"prompt": "' + b"x" * size + b"\n" + _line(PAIR_B))
    tracemalloc.start()
    try:
        _expect_error_at(path, 2, f"longer than the limit of {data.MAX_LINE_BYTES:,} bytes")
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 3 * data.MAX_LINE_BYTES, peak  # never holds the 8 MB line


# ---------------------------------------------------------------------- writing


def test_write_replaces_existing_file(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [PAIR_A, PAIR_B])
    write_jsonl(path, [RANKED_A])
    assert read_preferences(path) == [RANKED_A]
    assert os.listdir(tmp_path) == ["d.jsonl"]  # no temp file left behind


def test_failed_write_leaves_old_file_untouched(tmp_path):
    path = tmp_path / "d.jsonl"
    write_jsonl(path, [PAIR_A])
    before = path.read_bytes()

    def records_then_crash():
        yield PAIR_B
        raise RuntimeError("generator died")

    with pytest.raises(RuntimeError, match="generator died"):
        write_jsonl(path, records_then_crash())
    with pytest.raises(TypeError, match="record 1 is a dict"):
        write_jsonl(path, [PAIR_B, {"prompt": "p", "chosen": "a", "rejected": "b"}])
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["d.jsonl"]


# ---------------------------------------------------------------------- records


def test_ranked_record_normalises_to_tuples():
    record = RankedRecord("p", ["a", "b"], [1, 0])
    assert record == RankedRecord("p", ("a", "b"), (1, 0))
    assert record.responses == ("a", "b") and record.ranking == (1, 0)
    hash(record)  # frozen and hashable


def test_records_validate_on_construction():
    with pytest.raises(TypeError, match="'chosen' must be a str"):
        PairwiseRecord("p", 1, "b")
    with pytest.raises(ValueError, match="permutation"):
        RankedRecord("p", ["a", "b"], [0, 0])
    with pytest.raises(ValueError, match="between 2 and 9"):
        RankedRecord("p", ["a"], [0])


def test_to_pairs_order_and_content():
    record = RankedRecord("p", ("a", "b", "c"), (2, 0, 1))  # c > a > b
    assert record.to_pairs() == [
        PairwiseRecord("p", "c", "a"),
        PairwiseRecord("p", "c", "b"),
        PairwiseRecord("p", "a", "b"),
    ]


@pytest.mark.parametrize("k", range(2, 10))
def test_to_pairs_gives_all_pairs_better_first(k):
    rng = np.random.default_rng(k)
    ranking = [int(i) for i in rng.permutation(k)]
    responses = [f"r{i}" for i in range(k)]
    record = RankedRecord("p", responses, ranking)
    rank_of = {f"r{idx}": position for position, idx in enumerate(ranking)}

    pairs = record.to_pairs()
    assert len(pairs) == math.comb(k, 2)
    assert [(rank_of[p.chosen], rank_of[p.rejected]) for p in pairs] == list(
        combinations(range(k), 2)
    )


# ---------------------------------------------------------------------- labeler


def test_temperature_zero_sorts_by_gold():
    gold = np.array([0.1, 0.9, 0.5, 0.3])
    for seed in range(5):
        assert bradley_terry_ranking(gold, 0.0, np.random.default_rng(seed)) == [1, 2, 3, 0]


def test_temperature_zero_breaks_ties_at_random():
    gold = np.array([0.5, 0.5, 0.1])
    seen = {tuple(bradley_terry_ranking(gold, 0.0, np.random.default_rng(s))) for s in range(40)}
    assert seen == {(0, 1, 2), (1, 0, 2)}


def _win_rate(gold, temperature, better, worse, draws, seed):
    """Fraction of sampled rankings that put `better` above `worse`."""
    rng = np.random.default_rng(seed)
    wins = 0
    for _ in range(draws):
        ranking = bradley_terry_ranking(gold, temperature, rng)
        wins += ranking.index(better) < ranking.index(worse)
    return wins / draws


def test_agreement_with_gold_falls_as_temperature_rises():
    gold = np.array([0.9, 0.1])  # a clear pair
    rates = [_win_rate(gold, t, 0, 1, draws=2000, seed=0) for t in (0.0, 0.1, 0.3, 1.0, 100.0)]
    assert rates[0] == 1.0
    assert all(a > b for a, b in pairwise(rates)), rates
    assert abs(rates[-1] - 0.5) < 0.05  # near coin flip


@pytest.mark.parametrize("temperature", [0.05, 0.1, 0.2, 0.5])
def test_pair_win_rate_matches_bradley_terry(temperature):
    # A third response is present: the pairwise probability must not depend on it.
    gold = np.array([0.55, 0.35, 0.6])
    d = gold[0] - gold[1]
    expected = 1.0 / (1.0 + math.exp(-d / temperature))
    draws = 4000
    observed = _win_rate(gold, temperature, 0, 1, draws=draws, seed=1)
    tolerance = 4 * math.sqrt(expected * (1 - expected) / draws)  # 4 standard errors
    assert abs(observed - expected) < tolerance, (observed, expected, tolerance)


def test_huge_temperature_is_close_to_uniform():
    gold = np.array([1.0, 0.0, 0.5, 0.2])
    rng = np.random.default_rng(2)
    draws = 4000
    first = np.zeros(4)
    for _ in range(draws):
        first[bradley_terry_ranking(gold, 1e4, rng)[0]] += 1
    tolerance = 4 * math.sqrt(0.25 * 0.75 / draws)
    assert np.all(np.abs(first / draws - 0.25) < tolerance), first / draws


def test_labeler_rejects_bad_input():
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="temperature"):
        bradley_terry_ranking(np.array([0.1, 0.2]), -1.0, rng)
    with pytest.raises(ValueError, match="1-D"):
        bradley_terry_ranking(np.zeros((2, 2)), 1.0, rng)
    with pytest.raises(ValueError, match=r"\[0, 1\]"):
        label_rankings(["p"], [["a", "b"]], lambda p, r: 2.0, 0.1, rng)
    with pytest.raises(ValueError, match="one list of responses per prompt"):
        label_rankings(["p", "q"], [["a", "b"]], lambda p, r: 0.5, 0.1, rng)


def _gold_by_length(prompt: str, response: str) -> float:
    return min(len(response) / 10, 1.0)


def test_label_rankings_builds_records():
    prompts = ["p0", "p1"]
    responses = [["aaa", "a", "aaaaa"], ["bb", "b", "bbbb", "bbb"]]
    records = label_rankings(prompts, responses, _gold_by_length, 0.0, np.random.default_rng(0))
    assert records == [
        RankedRecord("p0", ("aaa", "a", "aaaaa"), (2, 0, 1)),
        RankedRecord("p1", ("bb", "b", "bbbb", "bbb"), (2, 3, 0, 1)),
    ]


def test_same_seed_same_rankings():
    prompts = [f"prompt {i}" for i in range(20)]
    responses = [["x" * j for j in range(1, 6)] for _ in prompts]

    def run(seed):
        return label_rankings(prompts, responses, _gold_by_length, 0.3, np.random.default_rng(seed))

    assert run(7) == run(7)
    assert run(7) != run(8)
