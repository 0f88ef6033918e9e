import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlstm.errors import UserError
from charlstm.vocab import CharVocab


def test_vocab_round_trip_with_non_ascii():
    text = "Héllo, wörld! 日本語 🎭\r\nΔx"
    vocab = CharVocab(text)
    assert list(vocab.chars) == sorted(set(text))
    assert vocab.decode(vocab.encode(text)) == text


@given(st.text(min_size=1, max_size=200))
def test_vocab_round_trips_any_text(text):
    vocab = CharVocab(text)
    assert vocab.decode(vocab.encode(text)) == text


def test_unknown_characters_are_named_in_one_message():
    vocab = CharVocab("abc")
    assert vocab.unknown("xaxy") == ["x", "y"]
    with pytest.raises(UserError, match=r"the text has characters the model never saw: 'z'; expected text made"):
        vocab.encode("abz")
    with pytest.raises(UserError, match=r"^--prompt has characters the model never saw: 'q'; use another$"):
        vocab.check_known("aq", "--prompt", "use another")
    many = "".join(chr(0x3B1 + i) for i in range(13))  # thirteen Greek letters
    with pytest.raises(UserError, match=r"'κ' and 3 more; fix it$"):
        vocab.check_known(many, "it", "fix it")
    vocab.check_known("cab", "it", "fine")  # nothing missing: no error


def test_equality_dtype_and_codepoints():
    assert CharVocab("ba") == CharVocab("ab") and CharVocab("ab") != CharVocab("abc")
    assert CharVocab("ab").dtype.itemsize == 1
    assert CharVocab(chr(i) for i in range(300)).dtype.itemsize == 2
    table = CharVocab("ac").codepoint_table()
    assert table[ord("a")] == 0 and table[ord("b")] == -1 and table[ord("c")] == 1
    assert repr(CharVocab("ba")) == "CharVocab('ab')"
