"""Where a corpus comes from: a text file, a folder of them, a glob, or a known corpus name
(unpacked from the copy shipped inside the package, or downloaded, once, and checked by sha256:
tiny Shakespeare is shipped, so the first run needs no network). Resolving gives the files in reading order and a
hash of their contents, which names the token cache and lets a resumed run check its text."""

from __future__ import annotations

import glob
import hashlib
import http.client
import lzma
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from functools import cached_property
from importlib import resources
from pathlib import Path

from charlstm.errors import UserError
from charlstm.files import atomic_write, file_sha256

GLOB_CHARS = "*?["


@dataclass(frozen=True)
class KnownCorpus:
    """A corpus that can be named instead of given as a path."""

    url: str
    sha256: str  # of the text itself
    filename: str
    packaged: str | None = None  # an xz-compressed copy in charlstm/data/packaged/, read before any download


KNOWN_CORPORA: dict[str, KnownCorpus] = {
    "tinyshakespeare": KnownCorpus(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filename="tinyshakespeare.txt",
        packaged="tinyshakespeare.txt.xz",  # 364 KB (xz -9e) for 1.1 MB: a first run works offline
    ),
}
DEFAULT_CORPUS_DIR = Path("corpora")

ProgressFn = Callable[[str, int, int | None], None]  # (what: "download" or "encode", done, total or None)


@dataclass(frozen=True)
class CorpusSource:
    """The files of a corpus in reading order, and the folder they are named from.

    A single file is read as it is. The files of a folder or a glob are joined in sorted path
    order, each ending with a newline (one is added where a file lacks it).
    """

    spec: str  # as the user gave it
    kind: str  # "file", "folder" or "glob"
    files: tuple[Path, ...]
    root: Path  # the file itself, the folder, or the folder the glob's matches share

    @property
    def joined(self) -> bool:
        """Whether this is a set of files (a folder or a glob), not one file given by its path."""
        return self.kind != "file"

    @property
    def name(self) -> str:
        """A short name for run directories and caches: the file's stem or the folder's name."""
        return (self.root.stem if self.kind == "file" else self.root.name) or "corpus"

    @cached_property
    def sha256(self) -> str:
        """The file's sha256, or for a set, the sha256 of each file's path (relative to the
        root) and sha256 in reading order: any change to the set or a file changes it."""
        if not self.joined:
            return file_sha256(self.files[0])
        digest = hashlib.sha256()
        for path in self.files:
            digest.update(f"{path.relative_to(self.root).as_posix()}\0{file_sha256(path)}\n".encode())
        return digest.hexdigest()

    def check_unchanged(self, expected: str | None, since: str, needs: str) -> None:
        """``UserError`` unless the text's sha256 is ``expected`` (nothing to check without one):
        "the corpus 'x' has changed since {since} (sha256 ...); {needs}"."""
        if expected and self.sha256 != expected:
            raise UserError(
                f"the corpus {self.spec!r} has changed since {since} (sha256 {self.sha256[:12]}... instead of "
                f"{expected[:12]}...); {needs}"
            )

    def cache_folder(self) -> Path:
        """Where the token cache goes first: beside the file or the folder, or in the folder the
        glob's matches share (caches are hidden files, which folders and globs leave out)."""
        return self.root if self.kind == "glob" else self.root.resolve().parent


def resolve_corpus(
    spec: str,
    corpus_dir: Path = DEFAULT_CORPUS_DIR,
    known: Mapping[str, KnownCorpus] = KNOWN_CORPORA,
    progress: ProgressFn | None = None,
) -> CorpusSource:
    """Turn ``--corpus`` (a file, a folder, a glob or a known name) into its files, downloading if needed."""
    path = Path(spec).expanduser()
    if path.is_dir():
        return _folder(spec, path)
    if not path.exists() and spec in known:
        return _single(spec, _known_file(known[spec], Path(corpus_dir), progress))
    if not path.exists() and any(c in spec for c in GLOB_CHARS):
        return _glob(spec)
    return _single(spec, path, known)


def _single(spec: str, path: Path, known: Mapping[str, KnownCorpus] = KNOWN_CORPORA) -> CorpusSource:
    if not path.exists():
        names = ", ".join(known) or "none"
        raise UserError(
            f"corpus {spec!r} does not exist, expected a text file, a folder of them, a quoted glob "
            f"or a known corpus name ({names})"
        )
    _check_readable(path, spec)
    return CorpusSource(spec, "file", (path,), path)


def _folder(spec: str, folder: Path) -> CorpusSource:
    """Every file below ``folder``, recursively, in sorted path order; hidden files and folders
    (names starting with a dot, such as charlstm's own caches) are left out."""
    folder, files = folder.resolve(), []
    for parent, dirs, names in os.walk(folder):
        dirs[:] = [d for d in dirs if not d.startswith(".")]
        files.extend(Path(parent) / n for n in names if not n.startswith("."))
    files = sorted((p for p in files if p.is_file()), key=lambda p: p.relative_to(folder).as_posix())
    if not files:
        raise UserError(f"corpus folder {spec!r} holds no files, expected a folder of text files")
    for path in files:
        _check_readable(path, str(path))
    return CorpusSource(spec, "folder", tuple(files), folder)


def _glob(spec: str) -> CorpusSource:
    matches = (Path(p) for p in glob.glob(os.path.expanduser(spec), recursive=True))
    files = sorted((p for p in matches if p.is_file()), key=lambda p: p.resolve().as_posix())  # as a folder is
    if not files:
        raise UserError(f"corpus glob {spec!r} matches no files, expected a pattern such as 'books/**/*.txt'")
    for path in files:
        _check_readable(path, str(path))
    files = [p.resolve() for p in files]
    return CorpusSource(spec, "glob", tuple(files), Path(os.path.commonpath([p.parent for p in files])))


def _check_readable(path: Path, spec: str) -> None:
    if not os.access(path, os.R_OK):
        raise UserError(f"corpus {spec!r} cannot be read (permission denied), expected a readable file")


def _known_file(entry: KnownCorpus, corpus_dir: Path, progress: ProgressFn | None) -> Path:
    """The known corpus's file in ``corpus_dir``, put there from the package's copy (or, for a
    corpus the package does not ship, downloaded) the first time it is asked for."""
    target = corpus_dir / entry.filename
    if not target.exists():
        shipped = resources.files(__package__).joinpath("packaged", entry.packaged) if entry.packaged else None
        if shipped is not None and shipped.is_file():
            unpack(shipped.read_bytes(), target, entry.sha256)
        else:
            download(entry.url, target, entry.sha256, progress)
    return target


def unpack(compressed: bytes, target: Path, sha256: str) -> None:
    """Write the xz-compressed text ``compressed`` to ``target`` atomically, once its sha256 is checked."""
    try:
        text = lzma.decompress(compressed)
    except lzma.LZMAError as e:
        raise UserError(f"charlstm's packaged copy of {target.name} is damaged ({e}); reinstall charlstm") from None
    found = hashlib.sha256(text).hexdigest()
    if found != sha256:
        raise UserError(
            f"charlstm's packaged copy of {target.name} has sha256 {found}, expected {sha256}; reinstall charlstm"
        )
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(target, lambda f: f.write(text))
    except OSError as e:  # a read-only folder, a full disk
        raise UserError(
            f"could not write {target} ({e.strerror or e}); run from a folder you can write to, or pass "
            f"--corpus PATH to a local text file"
        ) from None


def download(url: str, target: Path, sha256: str, progress: ProgressFn | None = None) -> None:
    """Fetch ``url`` into ``target`` atomically and check its sha256."""
    target.parent.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()

    def fetch(f) -> None:
        with urllib.request.urlopen(url, timeout=30) as response:
            total = int(response.headers.get("Content-Length") or 0) or None
            done = 0
            for block in iter(lambda: response.read(1 << 16), b""):
                f.write(block)
                digest.update(block)
                done += len(block)
                if progress:
                    progress("download", done, total)
        if digest.hexdigest() != sha256:
            raise UserError(
                f"the file downloaded from {url} has sha256 {digest.hexdigest()}, expected {sha256}; "
                f"place a correct copy at {target} or pass --corpus PATH"
            )

    try:
        atomic_write(target, fetch)
    except (urllib.error.URLError, http.client.HTTPException, OSError, TimeoutError) as e:
        reason = getattr(e, "reason", None) or e
        raise UserError(
            f"could not download the corpus from {url} ({reason}); put the file at {target} "
            f"yourself or pass --corpus PATH to a local text file"
        ) from None
