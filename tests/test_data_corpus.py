import hashlib
from pathlib import Path

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlstm.data.batches import StreamBatches, check_trainable, split_tokens
from charlstm.data.corpus import Reading, load_corpus
from charlstm.data.sources import resolve_corpus
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError

FORTUNES = Path(__file__).parent.parent.parent / "shared" / "corpora" / "fortunes"


def read(path, **reading):
    return load_corpus(resolve_corpus(str(path)), Reading(**reading))


def test_load_corpus_matches_python_encoding_and_reuses_cache(tmp_path):
    path = tmp_path / "t.txt"
    text = "To be, or not to be: ça, 日本\r\nthat is 🎭\n" * 50
    path.write_bytes(text.encode("utf-8"))
    corpus = read(path)
    assert isinstance(corpus.tokens, np.memmap) and not corpus.vocab.byte_fallback
    assert corpus.vocab.decode(corpus.tokens.tolist()) == text  # CRLF kept as it is
    caches = sorted(p.name for p in tmp_path.iterdir() if p.name != "t.txt")
    assert len(caches) == 2 and caches[0].endswith(".charlstm.json")
    mtime = (tmp_path / caches[1]).stat().st_mtime_ns
    again = read(path)
    assert (tmp_path / caches[1]).stat().st_mtime_ns == mtime  # not re-encoded
    assert np.array_equal(again.tokens, corpus.tokens) and again.sha256 == hashlib.sha256(text.encode()).hexdigest()
    assert again.stats.chars == again.stats.tokens == len(text) and again.stats.own_coverage == 1.0


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=300
    ).filter(lambda t: not t.isspace()),
    st.integers(1, 12),
)
def test_any_text_round_trips_through_the_cache_with_any_cut_off(tmp_path_factory, text, max_vocab):
    path = tmp_path_factory.mktemp("c") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    corpus = read(path, max_vocab=max_vocab)
    assert corpus.vocab.decode(corpus.tokens.tolist()) == text  # lossless, byte tokens or not
    assert len(corpus.vocab.chars) == min(max_vocab, len(set(text)))
    assert corpus.vocab.byte_fallback == (len(set(text)) > max_vocab) and corpus.stats.chars == len(text)


def test_the_commonest_characters_get_their_own_token(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("aaaa bbb cc d é 日\n" * 30, encoding="utf-8")
    corpus = read(path, max_vocab=4)
    assert corpus.vocab.chars == (" ", "a", "b", "c") and len(corpus.vocab) == 4 + (128 - 4) + 128
    text_chars = len("aaaa bbb cc d é 日\n") * 30
    assert corpus.stats.chars == text_chars and corpus.stats.distinct == 8
    assert corpus.stats.own_coverage == pytest.approx((4 + 3 + 2 + 5) / 18)
    assert corpus.stats.tokens == 30 * (14 + 1 + 2 + 3 + 1)  # d, é (2 bytes), 日 (3 bytes), newline
    assert read(path, byte_fallback="on").vocab.byte_fallback  # asked for, though every character fits


def test_changed_corpus_gets_a_new_cache(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcabc", encoding="utf-8")
    first = read(path)
    path.write_text("xyzxyz", encoding="utf-8")
    second = read(path)
    assert second.vocab.chars == ("x", "y", "z") and first.sha256 != second.sha256


@pytest.mark.parametrize(
    "content, needle",
    [
        (b"", "empty or only whitespace"),
        (b"  \n\t \n", "empty or only whitespace"),
        (b"abc\x00def", "binary"),
        (b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", "binary|not valid utf-8"),
        (b"caf\xe9 au lait", "not valid utf-8"),
    ],
)
def test_bad_corpus_files_are_refused(tmp_path, content, needle):
    path = tmp_path / "bad.txt"
    path.write_bytes(content)
    with pytest.raises(UserError, match=needle) as info:
        read(path)
    assert "--skip-bad-files" not in str(info.value)  # one file: nothing to skip


def test_other_encodings_with_encoding_option(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(UserError, match="--encoding"):
        read(path)
    corpus = read(path, encoding="latin-1")
    assert corpus.vocab.decode(corpus.tokens.tolist()) == "café au lait"
    with pytest.raises(UserError, match="not a known text encoding"):
        read(path, encoding="no-such-codec")


def test_a_folder_is_joined_with_a_newline_after_each_file(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("first\n", encoding="utf-8")
    (folder / "b.txt").write_text("second, no newline", encoding="utf-8")
    (folder / "c.txt").write_text("", encoding="utf-8")
    (folder / "d.txt").write_text("third\r\n", encoding="utf-8")
    corpus = read(folder)
    assert corpus.vocab.decode(corpus.tokens.tolist()) == "first\nsecond, no newline\nthird\r\n"
    assert corpus.stats.files == 4 and corpus.record()["path"] == str(folder)
    assert not list(folder.glob(".*"))  # the cache went beside the folder
    assert [p.name for p in tmp_path.glob(".notes.*")]


def test_a_bad_file_in_a_folder_is_named_or_skipped(tmp_path):
    folder = tmp_path / "mixed"
    folder.mkdir()
    (folder / "good.txt").write_text("good text\n", encoding="utf-8")
    (folder / "image.png").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR")
    (folder / "latin.txt").write_bytes("café".encode("latin-1"))
    with pytest.raises(UserError, match=r"image\.png. is not valid utf-8.*--skip-bad-files to leave such files out"):
        read(folder)
    corpus = read(folder, skip_bad_files=True)
    assert corpus.vocab.decode(corpus.tokens.tolist()) == "good text\n"
    assert [Path(p).name for p in corpus.stats.skipped_files] == ["image.png", "latin.txt"]
    assert corpus.stats.files == 1


def test_a_models_vocabulary_reads_any_text_with_byte_fallback(tmp_path):
    path = tmp_path / "other.txt"
    path.write_text("cab ☃ Ω\n", encoding="utf-8")
    with_bytes = read(path, vocab=CharVocab("abc\n ", byte_fallback=True))
    assert with_bytes.vocab.decode(with_bytes.tokens.tolist()) == "cab ☃ Ω\n" and with_bytes.stats.chars == 8
    with pytest.raises(UserError, match=r"has characters the model never saw: 'Ω', '☃'.*--unknown skip"):
        read(path, vocab=CharVocab("abc\n "))
    skipped = read(path, vocab=CharVocab("abc\n "), unknown="skip")
    assert skipped.vocab.decode(skipped.tokens.tolist()) == "cab  \n" and skipped.stats.dropped_chars == 2


@pytest.mark.skipif(not FORTUNES.is_dir(), reason="needs ../shared/corpora/fortunes, the real folder of 43 files")
def test_the_fortunes_folder(tmp_path):
    corpus = load_corpus(resolve_corpus(str(FORTUNES)), Reading())
    assert corpus.stats.files == 43 and not corpus.stats.skipped_files and corpus.stats.distinct == 113
    assert len(corpus.vocab.chars) == 113 and not corpus.vocab.byte_fallback
    assert corpus.stats.chars >= 2_576_627  # every file, and a newline after any that lacks one


def test_split_is_contiguous_tail():
    tokens = np.arange(100)
    train, val = split_tokens(tokens, 0.1)
    assert train.tolist() == list(range(90)) and val.tolist() == list(range(90, 100))


def test_stream_batches_layout():
    tokens = np.arange(41)  # L = 40 // 2 = 20 per stream
    batches = StreamBatches(tokens, streams=2, seq_len=8)
    assert len(batches) == 2  # 20 // 8, remainder dropped for training
    x, y = batches.batch(1)
    assert x.tolist() == [list(range(8, 16)), list(range(28, 36))]
    assert torch.equal(y, x + 1)
    full = StreamBatches(tokens, streams=2, seq_len=8, drop_last=False)
    assert len(full) == 3 and full.batch(2)[0].shape == (2, 4)  # the last partial chunk: 20 - 2 * 8
    placed = StreamBatches(np.arange(100), streams=2, seq_len=4, drop_last=False, starts=[10, 60], stream_len=6)
    assert [b[0].tolist() for b in (placed.batch(0), placed.batch(1))] == [
        [[10, 11, 12, 13], [60, 61, 62, 63]],
        [[14, 15], [64, 65]],
    ]


def test_too_short_corpus_says_how_short():
    with pytest.raises(UserError, match="needs 1,025.*--batch-size"):
        check_trainable(np.zeros(500), np.zeros(100), batch_size=8, seq_len=128)
    with pytest.raises(UserError, match="--val-fraction"):
        check_trainable(np.zeros(5000), np.zeros(1), batch_size=8, seq_len=128)


def test_a_models_vocabulary_without_a_newline_skips_the_added_ones(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    (folder / "a.txt").write_text("abc", encoding="utf-8")  # no final newline: one is added after it
    (folder / "b.txt").write_text("cab", encoding="utf-8")
    corpus = read(folder, vocab=CharVocab("abc"), unknown="skip")
    assert corpus.vocab.decode(corpus.tokens.tolist()) == "abccab" and corpus.stats.dropped_chars == 2
    with_bytes = read(folder, vocab=CharVocab("abc", byte_fallback=True))
    assert with_bytes.vocab.decode(with_bytes.tokens.tolist()) == "abc\ncab\n"
