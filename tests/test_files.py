import hashlib
import os

import pytest

from charlstm.files import atomic_path, atomic_write, file_sha256, remove_stale_temporaries


def test_atomic_write_replaces_the_file_whole(tmp_path):
    path = tmp_path / "f.txt"
    path.write_text("old")
    atomic_write(path, lambda f: f.write("new"), mode="w")
    assert path.read_text() == "new" and [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_a_failed_write_keeps_the_old_file_and_leaves_no_temporary(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")

    def full_disk(f):
        f.write(b"partial")
        raise OSError(28, "No space left on device")

    with pytest.raises(OSError, match="No space"):
        atomic_write(path, full_disk)
    assert path.read_bytes() == b"old" and [p.name for p in tmp_path.iterdir()] == ["f.bin"]


def test_an_interrupt_mid_write_keeps_the_old_file(tmp_path):
    path = tmp_path / "f.bin"
    path.write_bytes(b"old")
    with pytest.raises(KeyboardInterrupt), atomic_path(path) as tmp:
        tmp.write_bytes(b"half")
        raise KeyboardInterrupt
    assert path.read_bytes() == b"old" and len(list(tmp_path.iterdir())) == 1


def test_stale_temporaries_are_removed(tmp_path):
    (tmp_path / ".last.pt.abc123.tmp").write_bytes(b"torn")
    (tmp_path / "last.pt").write_bytes(b"whole")
    remove_stale_temporaries(tmp_path)
    remove_stale_temporaries(tmp_path / "missing")  # a folder that does not exist is fine
    assert [p.name for p in tmp_path.iterdir()] == ["last.pt"]


def test_file_sha256_matches_hashlib_across_blocks(tmp_path):
    data = os.urandom(3 * (1 << 20) + 17)  # more than one read block
    path = tmp_path / "blob"
    path.write_bytes(data)
    assert file_sha256(path) == hashlib.sha256(data).hexdigest()


def test_written_files_get_the_permissions_of_a_plain_open(tmp_path):
    """Not the 0o600 of a temporary file: a chart, a page or a config.toml is made to be shared."""
    plain, atomic = tmp_path / "plain", tmp_path / "atomic"
    plain.write_text("x")
    atomic_write(atomic, lambda f: f.write("x"), mode="w")
    assert atomic.stat().st_mode & 0o777 == plain.stat().st_mode & 0o777
    assert atomic.stat().st_mode & 0o044  # readable by group and others under the usual umask
