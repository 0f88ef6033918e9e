import pytest
from hypothesis import given
from hypothesis import strategies as st

from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError


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
    assert repr(CharVocab("ba")) == "CharVocab('ab')"


def test_byte_fallback_encodes_any_text_and_decodes_it_back():
    vocab = CharVocab("ab\n", byte_fallback=True)
    text = "ab☃\nÿ🎭a~"
    ids = vocab.encode(text)
    assert vocab.unknown(text) == [] and vocab.decode(ids) == text
    assert len(vocab.byte_values) == 125 + 128 and len(vocab) == 3 + 253  # ASCII without a token, high bytes
    assert ids[:2] == [1, 2] and ids[2:5] == [vocab.byte_ids[b] for b in "☃".encode()]
    assert ids[-1] == vocab.byte_ids[ord("~")] and vocab.byte_ids[ord("a")] == -1  # 'a' has its own token
    starts = vocab.char_starts()
    assert starts[:3].all() and starts[vocab.byte_ids[0xE2]] and not starts[vocab.byte_ids[0x98]]
    assert len(CharVocab("ab\n")) == 3 and CharVocab("ab\n").byte_values == ()


def test_decoding_chunks_keeps_characters_whole_and_drops_a_torn_end():
    vocab = CharVocab("a", byte_fallback=True)
    ids = vocab.encode("a日a")  # a, three bytes, a
    decode = vocab.decoder()
    assert [decode(ids[:2]), decode(ids[2:3]), decode(ids[3:])] == ["a", "", "日a"]
    assert vocab.decode(ids[:3]) == "a"  # an incomplete character at the very end is dropped
    assert vocab.decode([vocab.byte_ids[0x80], 0]) == "\ufffda"  # a stray continuation byte: one replacement


def test_the_commonest_characters_make_the_vocabulary():
    counts = {"a": 5, "b": 5, "c": 1, "é": 9}
    assert CharVocab.from_counts(counts, 4) == CharVocab("abcé")
    assert CharVocab.from_counts(counts, 2) == CharVocab("aé", byte_fallback=True)  # ties: lower code point
    assert CharVocab.from_counts(counts, 4, "on").byte_fallback
