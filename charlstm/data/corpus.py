"""A corpus read into tokens: one streamed pass counts its characters (and finds files that are
not text), a second writes the tokens into a memory-mapped file that later runs reuse.
The train/validation split and the batches of contiguous streams are ``batches.py``.

Memory stays bounded whatever the corpus size: text is decoded a block at a time and the
tokens go straight to the file.
"""

from __future__ import annotations

import codecs
import dataclasses
import errno
import hashlib
import json
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from charlstm.config import DEFAULT_MAX_VOCAB, TrainConfig
from charlstm.data import kernels
from charlstm.data.sources import CorpusSource, ProgressFn
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.files import atomic_path, atomic_write

BLOCK_BYTES = 1 << 16  # bytes decoded at a time; 1 MB blocks left glibc's heap 370 MB larger after 1 GB, 64 KB 95 MB
CACHE_WRITE_ERRORS = {errno.ENOSPC, errno.EROFS, errno.EACCES, errno.EPERM, errno.EDQUOT}  # try the next folder
PROGRESS_MIN_BYTES = 32 << 20  # smaller corpora encode in about a second: no progress to show
CACHE_VERSION = 2


@dataclass(frozen=True)
class Reading:
    """How a corpus's text becomes tokens."""

    encoding: str = "utf-8"
    skip_bad_files: bool = False  # leave out files of a folder that are not text in ``encoding``
    max_vocab: int = DEFAULT_MAX_VOCAB  # characters with their own token
    byte_fallback: str = "auto"  # "auto": byte tokens when some character has no own token; "on": always
    vocab: CharVocab | None = None  # encode with this vocabulary (a model's) instead of building one
    unknown: str = "error"  # with ``vocab``: characters it cannot encode are an "error" or "skip"ped

    @classmethod
    def of(cls, tcfg: TrainConfig) -> Reading:
        """How a training run reads its corpus."""
        return cls(tcfg.encoding, tcfg.skip_bad_files, tcfg.max_vocab, tcfg.byte_fallback)

    def key(self) -> str:
        """A short fingerprint of everything that shapes the tokens, for the cache file's name."""
        vocab = (
            (self.vocab.to_string(), self.vocab.byte_fallback) if self.vocab else (self.max_vocab, self.byte_fallback)
        )
        parts = (codec_name(self.encoding), self.skip_bad_files, vocab, self.unknown)
        return hashlib.sha256(repr(parts).encode()).hexdigest()[:12]


@dataclass
class CorpusStats:
    """What reading a corpus found."""

    chars: int = 0  # characters of the text, newlines added between files included
    tokens: int = 0
    distinct: int = 0  # distinct characters
    own_coverage: float = 1.0  # share of the characters written with their own token
    files: int = 1
    skipped_files: list[str] = field(default_factory=list)  # not text, left out (--skip-bad-files)
    dropped_chars: int = 0  # characters the vocabulary could not encode, left out (unknown="skip")


@dataclass
class TokenizedCorpus:
    """A corpus encoded once to ids; ``tokens`` is memory-mapped from the cache file."""

    source: CorpusSource
    vocab: CharVocab
    tokens: np.ndarray  # (N,) uint8/uint16/uint32, memory-mapped
    stats: CorpusStats

    @property
    def sha256(self) -> str:
        return self.source.sha256

    def record(self) -> dict:
        """What a checkpoint keeps of its corpus: where, which contents, and what reading it found."""
        return {"path": self.source.spec, "sha256": self.sha256, **asdict(self.stats)}


class _BadFile(Exception):
    """A file that is not text in the encoding: its message names the file and the reason."""


def codec_name(encoding: str) -> str:
    """Python's canonical name of a text encoding (``UTF8`` -> ``utf-8``)."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise UserError(f"--encoding {encoding!r} is not a known text encoding, expected e.g. utf-8, latin-1") from None


def _blocks(path: Path, encoding: str) -> Iterator[np.ndarray]:
    """The code points of ``path``, a block at a time (uint32); newlines are kept as they are."""
    decoder = codecs.getincrementaldecoder(encoding)(errors="strict")
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(BLOCK_BYTES)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise _BadFile(
                    f"corpus {str(path)!r} is not valid {encoding} text (bad byte near offset "
                    f"{offset + e.start}), expected {encoding}; pass --encoding, e.g. --encoding latin-1"
                ) from None
            if "\x00" in text:
                raise _BadFile(
                    f"corpus {str(path)!r} looks like a binary file (it holds NUL bytes), expected a text file"
                )
            offset += len(block)
            if text:
                yield np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            if not block:
                return


@dataclass
class _Scan:
    """The first pass: counts per code point and which files are read, with or without an added newline."""

    counts: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.int64))
    files: list[tuple[Path, bool]] = field(default_factory=list)  # (file, add a newline after it)
    skipped: list[str] = field(default_factory=list)
    done: int = 0  # bytes read


def _add(total: np.ndarray, more: np.ndarray) -> np.ndarray:
    """Counts ``total + more`` over the longer of the two lengths."""
    if len(more) > len(total):
        total = np.concatenate([total, np.zeros(len(more) - len(total), dtype=np.int64)])
    total[: len(more)] += more
    return total


def _scan(source: CorpusSource, reading: Reading, progress: ProgressFn | None, total: int) -> _Scan:
    scan = _Scan()
    for path in source.files:
        counts, last = np.zeros(0, dtype=np.int64), -1
        try:
            for codes in _blocks(path, reading.encoding):
                counts, last = _add(counts, np.bincount(codes)), int(codes[-1])
        except _BadFile as bad:
            if not (source.joined and reading.skip_bad_files):
                hint = ", or --skip-bad-files to leave such files out" if source.joined else ""
                raise UserError(f"{bad}{hint}") from None
            scan.skipped.append(str(path))
            continue
        newline = source.joined and last not in (-1, ord("\n"))
        scan.counts = _add(scan.counts, _add(counts, np.bincount([ord("\n")])) if newline else counts)
        scan.files.append((path, newline))
        scan.done += path.stat().st_size
        if progress:
            progress("encode", scan.done, total)
    return scan


def _char_counts(scan: _Scan, source: CorpusSource) -> dict[str, int]:
    present = np.flatnonzero(scan.counts)
    if not present.size or all(chr(c).isspace() for c in present):
        raise UserError(f"corpus {source.spec!r} is empty or only whitespace, expected some text to learn from")
    return {chr(c): int(scan.counts[c]) for c in present}


def _utf8_lengths(codes: np.ndarray) -> np.ndarray:
    return 1 + (codes >= 0x80) + (codes >= 0x800) + (codes >= 0x10000)


def _check_encodable(counts: dict[str, int], vocab: CharVocab, reading: Reading, source: CorpusSource) -> None:
    if reading.unknown != "skip":
        remedy = f"expected text made of the model's {len(vocab)} characters, or --unknown skip to leave them out"
        vocab.check_known(counts, f"corpus {source.spec!r}", remedy)


def _encode(
    scan: _Scan, vocab: CharVocab, reading: Reading, tmp: Path, progress: ProgressFn | None, total: int
) -> CorpusStats:
    """The second pass: write the tokens of every file the first pass kept into ``tmp`` (a .npy
    file), a block at a time with plain writes: a memory map would keep every page it wrote
    resident until the end, as much memory as the token file."""
    table = np.full(len(scan.counts), -1, dtype=np.int32)  # code point -> own id, or -1
    own = np.array([ord(c) for c in vocab.chars if ord(c) < len(scan.counts)], dtype=np.int64)
    table[own] = [vocab.index[chr(c)] for c in own]
    per_char = np.where(table >= 0, 1, _utf8_lengths(np.arange(len(table))) if vocab.byte_fallback else 0)
    size, chars = int((scan.counts * per_char).sum()), int(scan.counts.sum())
    added = np.empty(4, dtype=vocab.dtype)  # a newline after a file that lacks one: like any other character
    newline = added[: kernels.encode_block(np.array([ord("\n")], dtype=np.uint32), table, vocab.byte_ids, added)]
    buffer = np.empty(4 * (BLOCK_BYTES + 4), dtype=vocab.dtype)  # a block decodes to at most this many tokens
    done = scan.done
    with open(tmp, "wb") as f:
        header = {"descr": np.lib.format.dtype_to_descr(vocab.dtype), "fortran_order": False, "shape": (size,)}
        np.lib.format.write_array_header_1_0(f, header)
        for path, add_newline in scan.files:
            for codes in _blocks(path, reading.encoding):
                n = kernels.encode_block(codes, table, vocab.byte_ids, buffer)
                f.write(memoryview(buffer[:n]))
            if add_newline:
                f.write(memoryview(newline))
            done += path.stat().st_size
            if progress:
                progress("encode", done, total)
    own_chars = int(scan.counts[table >= 0].sum())
    return CorpusStats(
        chars=chars if vocab.byte_fallback else own_chars,
        tokens=size,
        distinct=int(np.count_nonzero(scan.counts)),
        own_coverage=own_chars / max(chars, 1),
        files=len(scan.files),
        skipped_files=scan.skipped,
        dropped_chars=0 if vocab.byte_fallback else chars - own_chars,
    )


def _cache_paths(source: CorpusSource, reading: Reading, folder: Path) -> tuple[Path, Path]:
    stem = f".{source.root.name}.{source.sha256[:16]}.{reading.key()}.charlstm"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def _cache_folders(source: CorpusSource) -> list[Path]:
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "charlstm"
    return [source.cache_folder(), home]


def _load_cached(tokens_path: Path, meta_path: Path) -> tuple[CharVocab, np.ndarray, CorpusStats] | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != CACHE_VERSION:
            return None
        tokens = np.load(tokens_path, mmap_mode="r")
        stats = CorpusStats(**meta["stats"])
        if len(tokens) != stats.tokens:
            return None
        return CharVocab(meta["vocab"], meta["byte_fallback"]), tokens, stats
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _write_cache(source: CorpusSource, reading: Reading, paths: tuple[Path, Path], progress: ProgressFn | None) -> None:
    total = 2 * sum(p.stat().st_size for p in source.files)
    progress = progress if total >= 2 * PROGRESS_MIN_BYTES else None
    scan = _scan(source, reading, progress, total)
    counts = _char_counts(scan, source)
    vocab = reading.vocab or CharVocab.from_counts(counts, reading.max_vocab, reading.byte_fallback)
    if reading.vocab is not None:
        _check_encodable(counts, vocab, reading, source)
    with atomic_path(paths[0]) as tmp:
        stats = _encode(scan, vocab, reading, tmp, progress, total)
    meta = {"version": CACHE_VERSION, "vocab": vocab.to_string(), "byte_fallback": vocab.byte_fallback}
    meta.update(stats=asdict(stats), encoding=reading.encoding, spec=source.spec)
    atomic_write(paths[1], lambda f: f.write(json.dumps(meta)), mode="w")


def load_corpus(
    source: CorpusSource, reading: Reading = Reading(), progress: ProgressFn | None = None
) -> TokenizedCorpus:
    """Encode ``source`` once into a token file beside it (or in the user cache) and map it."""
    reading = dataclasses.replace(reading, encoding=codec_name(reading.encoding))
    for folder in _cache_folders(source):
        paths = _cache_paths(source, reading, folder)
        cached = _load_cached(*paths)
        if cached is None and _writable(folder):
            try:
                _write_cache(source, reading, paths, progress)
            except OSError as e:
                if e.errno not in CACHE_WRITE_ERRORS:  # reading the corpus failed, not writing the cache
                    raise UserError(f"could not read corpus {source.spec!r} ({e.strerror or e})") from None
                continue  # this folder is full or read-only after all: try the next one
            cached = _load_cached(*paths)
        if cached is not None:
            return TokenizedCorpus(source, *cached)
    raise UserError(f"could not write a token cache for {source.spec!r}: no writable folder")


def load_in_vocab(
    source: CorpusSource, reading: Reading, vocab: CharVocab, progress: ProgressFn | None = None
) -> TokenizedCorpus:
    """``source`` in a model's ``vocab``: as ``reading`` builds it when that gives the same
    vocabulary (sharing the run's token file), else encoded with ``vocab`` itself."""
    corpus = load_corpus(source, reading, progress)
    if corpus.vocab == vocab:
        return corpus
    return load_corpus(source, dataclasses.replace(reading, vocab=vocab), progress)


def _writable(folder: Path) -> bool:
    try:
        folder.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    return os.access(folder, os.W_OK)
