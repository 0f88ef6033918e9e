import hashlib
import http.server
import threading

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from charlstm.corpus import (
    KnownCorpus,
    StreamBatches,
    check_trainable,
    load_corpus,
    remap_tokens,
    resolve_corpus,
    split_tokens,
)
from charlstm.errors import UserError
from charlstm.vocab import CharVocab


def test_load_corpus_matches_python_encoding_and_reuses_cache(tmp_path):
    path = tmp_path / "t.txt"
    text = "To be, or not to be: ça, 日本\r\nthat is 🎭\n" * 50
    path.write_bytes(text.encode("utf-8"))
    corpus = load_corpus(path)
    assert isinstance(corpus.tokens, np.memmap)
    assert corpus.vocab.decode(corpus.tokens.tolist()) == text  # CRLF kept as it is
    caches = sorted(p.name for p in tmp_path.iterdir() if p.name != "t.txt")
    assert len(caches) == 2 and caches[0].endswith(".charlstm.json")
    mtime = (tmp_path / caches[1]).stat().st_mtime_ns
    again = load_corpus(path)
    assert (tmp_path / caches[1]).stat().st_mtime_ns == mtime  # not re-encoded
    assert np.array_equal(again.tokens, corpus.tokens) and again.sha256 == hashlib.sha256(text.encode()).hexdigest()


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    st.text(
        alphabet=st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), min_size=1, max_size=300
    ).filter(lambda t: not t.isspace())
)
def test_corpus_cache_round_trips_any_text(tmp_path_factory, text):
    path = tmp_path_factory.mktemp("c") / "t.txt"
    path.write_bytes(text.encode("utf-8"))
    corpus = load_corpus(path)
    assert corpus.vocab.decode(corpus.tokens.tolist()) == text


def test_changed_corpus_gets_a_new_cache(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("abcabc", encoding="utf-8")
    first = load_corpus(path)
    path.write_text("xyzxyz", encoding="utf-8")
    second = load_corpus(path)
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
    with pytest.raises(UserError, match=needle):
        load_corpus(path)


def test_other_encodings_with_encoding_option(tmp_path):
    path = tmp_path / "latin.txt"
    path.write_bytes("café au lait".encode("latin-1"))
    with pytest.raises(UserError, match="--encoding"):
        load_corpus(path)
    assert load_corpus(path, "latin-1").vocab.decode(load_corpus(path, "latin-1").tokens.tolist()) == "café au lait"
    with pytest.raises(UserError, match="not a known text encoding"):
        load_corpus(path, "no-such-codec")


def test_missing_path_and_directory(tmp_path):
    with pytest.raises(UserError, match="does not exist.*tinyshakespeare"):
        resolve_corpus(str(tmp_path / "nope.txt"))
    with pytest.raises(UserError, match="is a directory"):
        resolve_corpus(str(tmp_path))


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


def test_too_short_corpus_says_how_short():
    with pytest.raises(UserError, match="needs 1,025.*--batch-size"):
        check_trainable(np.zeros(500), np.zeros(100), batch_size=8, seq_len=128)
    with pytest.raises(UserError, match="--val-fraction"):
        check_trainable(np.zeros(5000), np.zeros(1), batch_size=8, seq_len=128)


def test_remap_to_checkpoint_vocabulary(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text("cab", encoding="utf-8")
    corpus = load_corpus(path)
    ckpt_vocab = CharVocab("abcd")
    assert ckpt_vocab.decode(remap_tokens(corpus, ckpt_vocab).tolist()) == "cab"
    with pytest.raises(UserError, match="never saw"):
        remap_tokens(corpus, CharVocab("ab"))


class _Handler(http.server.BaseHTTPRequestHandler):
    body = b""

    def do_GET(self):  # noqa: N802 - http.server naming
        if self.path != "/input.txt":
            self.send_error(404)
            return
        self.send_response(200)
        self.send_header("Content-Length", str(len(self.body)))
        self.end_headers()
        self.wfile.write(self.body)

    def log_message(self, *args):
        pass


@pytest.fixture
def http_server():
    _Handler.body = ("First Citizen:\nBefore we proceed any further, hear me speak.\n" * 200).encode()
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


def test_known_corpus_downloads_with_progress_and_checksum(tmp_path, http_server):
    sha = hashlib.sha256(_Handler.body).hexdigest()
    known = {"toy": KnownCorpus(f"{http_server}/input.txt", sha, "toy.txt")}
    seen = []
    path = resolve_corpus("toy", tmp_path / "corpora", known, progress=lambda d, t: seen.append((d, t)))
    assert path == tmp_path / "corpora" / "toy.txt" and path.read_bytes() == _Handler.body
    assert seen[-1] == (len(_Handler.body), len(_Handler.body))
    assert [p.name for p in path.parent.iterdir()] == ["toy.txt"]  # no temporary file left
    assert (
        resolve_corpus("toy", tmp_path / "corpora", {"toy": KnownCorpus("http://127.0.0.1:9/x", sha, "toy.txt")})
        == path
    )


def test_download_with_wrong_checksum_leaves_nothing(tmp_path, http_server):
    known = {"toy": KnownCorpus(f"{http_server}/input.txt", "0" * 64, "toy.txt")}
    with pytest.raises(UserError, match="sha256"):
        resolve_corpus("toy", tmp_path / "corpora", known)
    assert list((tmp_path / "corpora").iterdir()) == []


def test_offline_download_says_where_to_put_the_file(tmp_path, http_server):
    known = {"toy": KnownCorpus(f"{http_server}/missing.txt", "0" * 64, "toy.txt")}
    with pytest.raises(UserError) as info:
        resolve_corpus("toy", tmp_path / "corpora", known)
    message = str(info.value)
    assert "could not download" in message and "toy.txt" in message and "--corpus PATH" in message
    assert "\n" not in message
