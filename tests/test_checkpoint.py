import os

import pytest
import torch

from charlstm import checkpoint as ckpt
from charlstm.config import ModelConfig
from charlstm.corpus import CharVocab
from charlstm.errors import UserError
from charlstm.model import CharLSTM


def payload(model: CharLSTM, vocab: CharVocab) -> dict:
    return {
        "format_version": ckpt.FORMAT_VERSION,
        "model_config": model.config.to_dict(),
        "vocab": vocab.to_string(),
        "model": model.state_dict(),
    }


@pytest.fixture
def saved(tmp_path):
    vocab = CharVocab("abcdef\n")
    model = CharLSTM(ModelConfig(vocab_size=len(vocab), embedding=4, hidden=8, layers=2))
    path = tmp_path / "best.pt"
    ckpt.save_checkpoint(path, payload(model, vocab))
    return path, model, vocab


def test_round_trip(saved):
    path, model, vocab = saved
    loaded, loaded_vocab = ckpt.model_from_payload(ckpt.load_checkpoint(path))
    assert loaded_vocab == vocab and not loaded.training
    for (k, a), b in zip(model.state_dict().items(), loaded.state_dict().values(), strict=True):
        assert torch.equal(a, b), k


def test_run_directory_means_best_then_last(saved, tmp_path):
    path, *_ = saved
    assert ckpt.find_checkpoint(tmp_path) == path
    os.replace(path, tmp_path / "last.pt")
    assert ckpt.find_checkpoint(tmp_path) == tmp_path / "last.pt"
    with pytest.raises(UserError, match="holds no best.pt"):
        ckpt.find_checkpoint(tmp_path / "..")


def test_truncated_and_garbage_files(saved, tmp_path):
    path, *_ = saved
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(path.read_bytes()[: path.stat().st_size // 2])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(os.urandom(4096))
    for bad in (truncated, garbage):
        with pytest.raises(UserError, match="not a readable charlstm checkpoint"):
            ckpt.load_checkpoint(bad)


def test_not_a_checkpoint_and_unknown_version(tmp_path, saved):
    other = tmp_path / "other.pt"
    torch.save({"weights": torch.zeros(3)}, other)
    with pytest.raises(UserError, match="not a charlstm checkpoint"):
        ckpt.load_checkpoint(other)
    _, model, vocab = saved
    future = tmp_path / "future.pt"
    torch.save({**payload(model, vocab), "format_version": 99}, future)
    with pytest.raises(UserError, match="format version 99, expected 1"):
        ckpt.load_checkpoint(future)


class Payload:
    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def test_pickled_objects_are_refused_and_never_run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    evil = tmp_path / "evil.pt"
    torch.save({"format_version": 1, "model": Payload()}, evil)
    with pytest.raises(UserError, match="refused"):
        ckpt.load_checkpoint(evil)
    assert not (tmp_path / "PWNED").exists()


def test_save_is_atomic_when_the_write_fails(saved, monkeypatch):
    path, model, vocab = saved
    before = path.read_bytes()

    def full_disk(obj, f, *a, **k):
        with open(f, "wb") as fh:
            fh.write(b"partial")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(torch, "save", full_disk)
    with pytest.raises(OSError):
        ckpt.save_checkpoint(path, payload(model, vocab))
    assert path.read_bytes() == before
    assert sorted(p.name for p in path.parent.iterdir()) == ["best.pt"]
