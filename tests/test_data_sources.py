import hashlib
import http.server
import lzma
import os
import threading
import urllib.request

import pytest

from charlstm.data.sources import KNOWN_CORPORA, KnownCorpus, resolve_corpus, unpack
from charlstm.errors import UserError


def write(folder, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def test_a_file_is_read_as_it_is(tmp_path):
    write(tmp_path, {"play.txt": b"KING:\nno newline at the end"})
    source = resolve_corpus(str(tmp_path / "play.txt"))
    assert source.kind == "file" and not source.joined and source.name == "play"
    assert source.sha256 == hashlib.sha256(b"KING:\nno newline at the end").hexdigest()
    assert source.cache_folder() == tmp_path.resolve()


def test_a_folder_is_every_file_below_it_in_path_order(tmp_path):
    write(tmp_path / "books", {"b.txt": b"b", "a/z.txt": b"z", "a/c.md": b"c", ".hidden": b"h", ".cache/x": b"x"})
    source = resolve_corpus(str(tmp_path / "books"))
    assert [p.relative_to(source.root).as_posix() for p in source.files] == ["a/c.md", "a/z.txt", "b.txt"]
    assert source.kind == "folder" and source.joined and source.name == "books"
    assert source.cache_folder() == tmp_path.resolve()  # beside the folder, never inside it
    before = source.sha256
    (tmp_path / "books" / "a" / "z.txt").write_bytes(b"changed")
    assert resolve_corpus(str(tmp_path / "books")).sha256 != before
    os.rename(tmp_path / "books" / "b.txt", tmp_path / "books" / "d.txt")  # same contents, another name
    assert resolve_corpus(str(tmp_path / "books")).sha256 not in (before, source.sha256)


def test_a_glob_is_its_matches_in_path_order(tmp_path, monkeypatch):
    write(tmp_path, {"logs/2.txt": b"2", "logs/1.txt": b"1", "logs/deep/3.txt": b"3", "logs/skip.md": b"m"})
    monkeypatch.chdir(tmp_path)
    source = resolve_corpus("logs/**/*.txt")
    assert [p.name for p in source.files] == ["1.txt", "2.txt", "3.txt"] and source.kind == "glob"
    assert source.root == (tmp_path / "logs").resolve() and source.cache_folder() == source.root
    with pytest.raises(UserError, match="matches no files"):
        resolve_corpus("logs/*.csv")


def test_missing_paths_and_empty_folders(tmp_path):
    with pytest.raises(UserError, match="does not exist.*a folder of them, a quoted glob.*tinyshakespeare"):
        resolve_corpus(str(tmp_path / "nope.txt"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="holds no files"):
        resolve_corpus(str(tmp_path / "empty"))


def test_unreadable_file(tmp_path, monkeypatch):
    write(tmp_path, {"t.txt": b"text"})
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda p, mode: False if str(p).endswith("t.txt") else real_access(p, mode))
    with pytest.raises(UserError, match="cannot be read"):
        resolve_corpus(str(tmp_path / "t.txt"))


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
    source = resolve_corpus("toy", tmp_path / "corpora", known, progress=lambda *a: seen.append(a))
    path = source.files[0]
    assert path == tmp_path / "corpora" / "toy.txt" and path.read_bytes() == _Handler.body
    assert source.kind == "file" and source.name == "toy" and source.sha256 == sha
    assert seen[-1] == ("download", len(_Handler.body), len(_Handler.body))
    assert [p.name for p in path.parent.iterdir()] == ["toy.txt"]  # no temporary file left
    offline = {"toy": KnownCorpus("http://127.0.0.1:9/x", sha, "toy.txt")}
    assert resolve_corpus("toy", tmp_path / "corpora", offline).files == (path,)  # downloaded once


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


def test_folders_and_globs_read_files_in_the_same_order(tmp_path, monkeypatch):
    write(tmp_path / "set", {"a-b/x.txt": b"1", "a/z.txt": b"2", "a.txt": b"3"})
    monkeypatch.chdir(tmp_path)
    folder, matched = resolve_corpus("set"), resolve_corpus("set/**/*.txt")
    assert [p.as_posix() for p in folder.files] == [p.as_posix() for p in matched.files]
    assert [p.relative_to(folder.root).as_posix() for p in folder.files] == ["a-b/x.txt", "a.txt", "a/z.txt"]


def test_tiny_shakespeare_comes_from_the_package_without_the_network(tmp_path, monkeypatch):
    def no_network(*args, **kwargs):
        raise AssertionError("the packaged corpus must not be downloaded")

    monkeypatch.setattr(urllib.request, "urlopen", no_network)
    source = resolve_corpus("tinyshakespeare", tmp_path / "corpora")
    path = source.files[0]
    assert path == tmp_path / "corpora" / "tinyshakespeare.txt" and source.name == "tinyshakespeare"
    assert source.sha256 == KNOWN_CORPORA["tinyshakespeare"].sha256 and path.stat().st_size == 1_115_394
    assert path.read_text().startswith("First Citizen:\nBefore we proceed any further, hear me speak.")
    assert [p.name for p in path.parent.iterdir()] == ["tinyshakespeare.txt"]  # no temporary file left
    path.write_text("my own copy")  # the corpora/ folder is a cache: a file there is used as it is
    assert resolve_corpus("tinyshakespeare", tmp_path / "corpora").files[0].read_text() == "my own copy"


def test_a_damaged_packaged_copy_is_refused_and_nothing_written(tmp_path):
    target = tmp_path / "corpora" / "toy.txt"
    with pytest.raises(UserError, match="damaged.*reinstall charlstm"):
        unpack(b"not xz at all", target, "0" * 64)
    with pytest.raises(UserError, match="sha256 .*, expected 0{64}; reinstall charlstm"):
        unpack(lzma.compress(b"other text"), target, "0" * 64)
    assert not target.exists() and not any(tmp_path.rglob("*.tmp"))
    unpack(lzma.compress(b"the text"), target, hashlib.sha256(b"the text").hexdigest())
    assert target.read_bytes() == b"the text"


def test_a_known_corpus_the_package_does_not_ship_is_still_downloaded(tmp_path, http_server):
    sha = hashlib.sha256(_Handler.body).hexdigest()
    known = {"toy": KnownCorpus(f"{http_server}/input.txt", sha, "toy.txt", packaged="not-shipped.txt.xz")}
    assert resolve_corpus("toy", tmp_path / "corpora", known).files[0].read_bytes() == _Handler.body


def test_a_corpus_folder_that_cannot_be_made_is_one_clear_line(tmp_path):
    (tmp_path / "a-file").write_text("not a folder")  # as a read-only folder would, for root too
    with pytest.raises(UserError, match="could not write .*tinyshakespeare.txt .*--corpus PATH") as info:
        resolve_corpus("tinyshakespeare", tmp_path / "a-file" / "corpora")
    assert "\n" not in str(info.value)
