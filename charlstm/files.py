"""Files written so that a crash never leaves a torn one, the checks before a command writes one,
and content hashes."""

from __future__ import annotations

import hashlib
import os
import tempfile
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO

from charlstm.errors import UserError

HASH_BLOCK = 1 << 20  # bytes read per update while hashing: a file never sits whole in memory


def _umask() -> int:
    mask = os.umask(0)  # reading the umask means setting it; put it straight back
    os.umask(mask)
    return mask


UMASK = _umask()  # at import, before any thread could race on it


@contextmanager
def atomic_path(path: Path) -> Iterator[Path]:
    """Yield a temporary path in the same folder as ``path``; on success fsync it and rename
    it over ``path``. A crash at any moment leaves the old file or the new one, never a torn one.
    The file gets the permissions a plain ``open`` gives (0o666 less the umask), not the private
    0o600 of a temporary file: checkpoints, pages and charts are made to be shared.
    """
    path = Path(path)
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    except OSError as e:  # a folder that takes no new file (/proc, a read-only mount)
        raise _unwritable(path, e.strerror or str(e)) from None
    os.close(fd)
    try:
        yield Path(tmp)
        os.chmod(tmp, 0o666 & ~UMASK)  # once written: a writer may have replaced the file (safetensors does)
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)


def output_file(path: str | Path, overwrite: bool, flag: str, expected: str = "the path of a file") -> Path:
    """Where a command writes a file, checked before any long work: a folder or (unless
    ``overwrite``) an existing file is refused, and a missing folder is made, as ``train --out``
    makes its run directory. ``flag`` names the option (or argument) in the messages."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise UserError(f"{flag} {str(path)!r} is a folder, expected {expected}")
    if path.exists() and not overwrite:
        raise UserError(f"{flag} {str(path)!r} already exists; pass --overwrite to replace it, or choose another path")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise _unwritable(path, e.strerror or str(e)) from None
    if not os.access(path.parent, os.W_OK):
        raise _unwritable(path, "Permission denied")
    return path


def _unwritable(path: Path, why: str) -> UserError:
    return UserError(f"cannot write to {str(path)!r} ({why}), expected a writable folder")


def atomic_write(path: Path, write: Callable[[IO], None], mode: str = "wb") -> None:
    """Write ``path`` atomically: ``write`` gets an open file in ``mode``."""
    with atomic_path(path) as tmp, open(tmp, mode) as f:
        write(f)


def remove_stale_temporaries(folder: Path) -> None:
    """Delete temporary files that a killed process left mid-write (``.last.pt.XXXX.tmp``)."""
    for stale in folder.glob(".*.tmp") if folder.is_dir() else ():
        stale.unlink(missing_ok=True)


def _fsync_dir(folder: Path) -> None:
    """Make a rename inside ``folder`` durable (where the platform can open a directory)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # some platforms cannot open a directory; the rename is still atomic
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def file_sha256(path: Path) -> str:
    """Hex sha256 of a file's bytes, read a block at a time."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(HASH_BLOCK), b""):
            digest.update(block)
    return digest.hexdigest()
