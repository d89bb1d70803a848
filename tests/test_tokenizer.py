import pytest

from textenv.tokenizer import Tokenizer, WordTokenizer


def test_round_trip_and_specials(tmp_path):
    tok = WordTokenizer(["the", "crust", "was", "crispy", "."])
    assert isinstance(tok, Tokenizer)
    text = "the crust was crispy ."
    ids = tok.encode(text)
    assert tok.decode(ids) == text
    assert (tok.pad_id, tok.bos_id, tok.eos_id) == (0, 1, 2)
    assert tok.decode([tok.bos_id] + ids + [tok.eos_id, tok.pad_id]) == text + " <eos>"
    assert tok.encode(text + " <eos>")[-1] == tok.eos_id
    tok.save(tmp_path / "tok.json")
    again = WordTokenizer.load(tmp_path / "tok.json")
    assert again.itos == tok.itos


def test_unknown_word_is_a_clear_error_or_unk():
    with pytest.raises(ValueError, match="unknown word 'pizza'"):
        WordTokenizer(["the"]).encode("the pizza")
    tok = WordTokenizer(["the"], allow_unk=True)
    assert tok.encode("the pizza") == [4, tok.unk_id]


def test_bad_vocabulary_and_files(tmp_path):
    with pytest.raises(ValueError, match="duplicate"):
        WordTokenizer(["a", "a"])
    with pytest.raises(FileNotFoundError, match="nope.json"):
        WordTokenizer.load(tmp_path / "nope.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ValueError, match="bad.json"):
        WordTokenizer.load(tmp_path / "bad.json")
