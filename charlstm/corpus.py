"""Corpus handling: known corpora and their download, the token cache on disk (the text encoded
once with its vocabulary, then memory-mapped), the train/validation split and the batches of
contiguous streams."""

from __future__ import annotations

import codecs
import hashlib
import http.client
import json
import os
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from charlstm.errors import UserError
from charlstm.files import atomic_path, atomic_write, file_sha256
from charlstm.vocab import CharVocab

CHUNK_CHARS = 1 << 20  # characters decoded per read: the corpus never sits whole in memory
CACHE_VERSION = 1


@dataclass(frozen=True)
class KnownCorpus:
    """A corpus that can be named instead of given as a path."""

    url: str
    sha256: str
    filename: str


KNOWN_CORPORA: dict[str, KnownCorpus] = {
    "tinyshakespeare": KnownCorpus(
        url="https://raw.githubusercontent.com/karpathy/char-rnn/master/data/tinyshakespeare/input.txt",
        sha256="86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed",
        filename="tinyshakespeare.txt",
    ),
}
DEFAULT_CORPUS_DIR = Path("corpora")

ProgressFn = Callable[[int, int | None], None]  # (bytes done, total bytes or None)


def resolve_corpus(
    spec: str,
    corpus_dir: Path = DEFAULT_CORPUS_DIR,
    known: Mapping[str, KnownCorpus] = KNOWN_CORPORA,
    progress: ProgressFn | None = None,
) -> Path:
    """Turn ``--corpus`` (a path or a known name) into a readable file, downloading if needed."""
    path = Path(spec).expanduser()
    if path.exists() or spec not in known:
        check_readable(path, spec, known)
        return path
    entry = known[spec]
    target = Path(corpus_dir) / entry.filename
    if not target.exists():
        download(entry.url, target, entry.sha256, progress)
    return target


def check_readable(path: Path, spec: str, known: Mapping[str, KnownCorpus] = KNOWN_CORPORA) -> None:
    names = ", ".join(known) or "none"
    if not path.exists():
        raise UserError(
            f"corpus {spec!r} does not exist, expected a path to a UTF-8 text file or a known corpus name ({names})"
        )
    if path.is_dir():
        raise UserError(f"corpus {spec!r} is a directory, expected a text file")
    if not os.access(path, os.R_OK):
        raise UserError(f"corpus {spec!r} cannot be read (permission denied), expected a readable file")


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
                    progress(done, total)
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


@dataclass
class TokenizedCorpus:
    """A corpus encoded once to ids; ``tokens`` is memory-mapped from the cache file."""

    path: Path
    vocab: CharVocab
    tokens: np.ndarray  # (N,) uint8/uint16/uint32, memory-mapped
    sha256: str

    @property
    def name(self) -> str:
        return self.path.stem


def codec_name(encoding: str) -> str:
    """Python's canonical name of a text encoding (``UTF8`` -> ``utf-8``)."""
    try:
        return codecs.lookup(encoding).name
    except LookupError:
        raise UserError(f"--encoding {encoding!r} is not a known text encoding, expected e.g. utf-8, latin-1") from None


def _read_chunks(path: Path, encoding: str) -> Iterable[str]:
    """Decode ``path`` incrementally; newlines are kept exactly as they are (CRLF stays CRLF)."""
    decoder = codecs.getincrementaldecoder(codec_name(encoding))(errors="strict")
    offset = 0
    with open(path, "rb") as f:
        while True:
            block = f.read(CHUNK_CHARS)
            try:
                text = decoder.decode(block, final=not block)
            except UnicodeDecodeError as e:
                raise UserError(
                    f"corpus {str(path)!r} is not valid {encoding} text (bad byte near offset "
                    f"{offset + e.start}), expected {encoding}; pass --encoding, e.g. --encoding latin-1"
                ) from None
            if "\x00" in text:
                raise UserError(
                    f"corpus {str(path)!r} looks like a binary file (it holds NUL bytes), expected a text file"
                )
            offset += len(block)
            if text:
                yield text
            if not block:
                return


def _scan_vocab(path: Path, encoding: str) -> tuple[CharVocab, int]:
    chars: set[str] = set()
    count = 0
    for text in _read_chunks(path, encoding):
        chars.update(text)
        count += len(text)
    if not chars or all(c.isspace() for c in chars):
        raise UserError(f"corpus {str(path)!r} is empty or only whitespace, expected some text to learn from")
    return CharVocab(chars), count


def _cache_paths(path: Path, sha: str, encoding: str, folder: Path) -> tuple[Path, Path]:
    stem = f".{path.name}.{sha[:16]}.{encoding}.charlstm"
    return folder / f"{stem}.npy", folder / f"{stem}.json"


def _cache_folders(path: Path) -> list[Path]:
    home = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "charlstm"
    return [path.resolve().parent, home]


def _load_cached(tokens_path: Path, meta_path: Path) -> tuple[CharVocab, np.ndarray] | None:
    try:
        meta = json.loads(meta_path.read_text(encoding="utf-8"))
        if meta.get("version") != CACHE_VERSION:
            return None
        tokens = np.load(tokens_path, mmap_mode="r")
        vocab = CharVocab(meta["vocab"])
        if len(tokens) != meta["count"]:
            return None
        return vocab, tokens
    except (OSError, ValueError, KeyError):
        return None


def _write_cache(path: Path, encoding: str, tokens_path: Path, meta_path: Path) -> None:
    vocab, count = _scan_vocab(path, encoding)
    table = vocab.codepoint_table()

    with atomic_path(tokens_path) as tmp:
        arr = np.lib.format.open_memmap(tmp, mode="w+", dtype=vocab.dtype, shape=(count,))
        pos = 0
        for text in _read_chunks(path, encoding):
            codes = np.frombuffer(text.encode("utf-32-le"), dtype=np.uint32)
            arr[pos : pos + len(codes)] = table[codes]
            pos += len(codes)
        arr.flush()
        del arr
    meta = {"version": CACHE_VERSION, "vocab": vocab.to_string(), "count": count, "encoding": encoding}
    atomic_write(meta_path, lambda f: f.write(json.dumps(meta)), mode="w")


def load_corpus(path: Path, encoding: str = "utf-8") -> TokenizedCorpus:
    """Encode ``path`` once into a token file beside it (or in the user cache) and map it."""
    path = Path(path)
    check_readable(path, str(path))
    encoding = codec_name(encoding)
    sha = file_sha256(path)
    for folder in _cache_folders(path):
        tokens_path, meta_path = _cache_paths(path, sha, encoding, folder)
        cached = _load_cached(tokens_path, meta_path)
        if cached is None:
            try:
                folder.mkdir(parents=True, exist_ok=True)
                _write_cache(path, encoding, tokens_path, meta_path)
            except OSError:
                continue  # folder not writable (permissions, read-only, full): try the next one
            cached = _load_cached(tokens_path, meta_path)
        if cached is not None:
            return TokenizedCorpus(path, cached[0], cached[1], sha)
    raise UserError(f"could not write a token cache for {str(path)!r}: no writable folder")


def remap_tokens(corpus: TokenizedCorpus, vocab: CharVocab) -> np.ndarray:
    """The corpus's tokens re-encoded with another vocabulary (e.g. a checkpoint's)."""
    if corpus.vocab == vocab:
        return corpus.tokens
    remedy = f"expected text made of the model's {len(vocab)} characters"
    vocab.check_known(corpus.vocab.chars, f"corpus {str(corpus.path)!r}", remedy)
    table = np.array([vocab.index[c] for c in corpus.vocab.chars], dtype=vocab.dtype)
    return table[corpus.tokens]


def split_tokens(tokens: np.ndarray, val_fraction: float) -> tuple[np.ndarray, np.ndarray]:
    """Training head and validation tail (the contiguous last ``val_fraction``)."""
    n_val = int(len(tokens) * val_fraction)
    return tokens[: len(tokens) - n_val], tokens[len(tokens) - n_val :]


class StreamBatches:
    """Contiguous streams over a token array, walked in chunks of ``seq_len``.

    The array is cut into ``streams`` equal pieces of L = (N - 1) // streams tokens; row b of
    every batch continues row b of the batch before, so the LSTM state can be carried::

        tokens:  |---- stream 0 ----|---- stream 1 ----| ... |-- stream B-1 --|(rest)
        chunk i: x[b] = tokens[b*L + i*T : b*L + (i+1)*T]    (B, T)
                 y[b] = tokens[b*L + i*T + 1 : b*L + (i+1)*T + 1]
    """

    def __init__(self, tokens: np.ndarray, streams: int, seq_len: int, drop_last: bool = True):
        self.tokens, self.streams, self.seq_len = tokens, streams, seq_len
        self.stream_len = (len(tokens) - 1) // streams
        full, rest = divmod(self.stream_len, seq_len)
        self.num_chunks = full if drop_last or not rest else full + 1
        self.starts = np.arange(streams, dtype=np.int64)[:, None] * self.stream_len  # (B, 1)

    def __len__(self) -> int:
        return self.num_chunks

    def batch(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        """Inputs and targets of chunk ``i``, each (B, T) int64 (T shorter for a last partial chunk)."""
        begin = i * self.seq_len
        width = min(self.seq_len, self.stream_len - begin)
        idx = self.starts + begin + np.arange(width + 1, dtype=np.int64)  # (B, T+1)
        window = torch.from_numpy(np.asarray(self.tokens[idx], dtype=np.int64))
        return window[:, :-1], window[:, 1:]


def check_trainable(train: np.ndarray, val: np.ndarray, batch_size: int, seq_len: int) -> None:
    """Refuse splits too short for one training batch or one evaluation chunk."""
    need = batch_size * seq_len + 1
    if len(train) < need:
        raise UserError(
            f"the training split has {len(train):,} characters, too short for one batch of "
            f"--batch-size {batch_size} x --seq-len {seq_len} (needs {need:,}); "
            f"use a longer corpus or smaller --batch-size/--seq-len"
        )
    if len(val) < 2:
        raise UserError(
            f"the validation split has {len(val)} characters, too few for one evaluation; "
            f"raise --val-fraction or use a longer corpus"
        )
