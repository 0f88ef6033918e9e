"""Shared fixtures: small corpora made on the fly, tiny model/train configs (CPU, seconds), and a
tiny trained run that read-only tests share."""

from __future__ import annotations

import os
import random
import shutil
from pathlib import Path

import pytest

from charlstm.config import ModelConfig, TrainConfig

WORDS = ["the", "king", "queen", "sword", "night", "love", "my", "lord", "and", "of", "to", "is", "thou", "art"]
SPEAKERS = ["KING", "QUEEN", "FOOL"]
FIXTURES = Path(__file__).parent / "fixtures"


def play_text(chars: int, seed: int = 0, speakers: list[str] = SPEAKERS) -> str:
    """A toy play: speaker names in capitals, a colon, short lines of words."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < chars:
        speaker = rng.choice(speakers)
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        block = f"{speaker}:\n{line.capitalize()}.\n\n"
        parts.append(block)
        size += len(block)
    return "".join(parts)[:chars]


def tiny_train_config(corpus: Path, out: Path, **changes) -> TrainConfig:
    """Training settings that take a second or two on two cores."""
    settings = dict(
        corpus=str(corpus),
        seq_len=16,
        batch_size=4,
        lr=1e-2,
        warmup_steps=2,
        max_steps=12,
        eval_every=6,
        save_every=4,
        log_every=2,
        sample_chars=20,
        precision="fp32",
        device="cpu",
        out=str(out),
    )
    return TrainConfig(**{**settings, **changes})


@pytest.fixture
def corpus_file(tmp_path: Path) -> Path:
    path = tmp_path / "play.txt"
    path.write_text(play_text(20_000), encoding="utf-8")
    return path


@pytest.fixture
def tiny_model() -> ModelConfig:
    return ModelConfig(vocab_size=30, embedding=8, hidden=16, layers=2, dropout=0.0)


@pytest.fixture
def tiny_train(corpus_file: Path, tmp_path: Path) -> TrainConfig:
    return tiny_train_config(corpus_file, tmp_path / "run")


@pytest.fixture(scope="session")
def shared_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run trained once for the whole session (40 steps, 2x16): read it, never write to it."""
    from charlstm.training.loop import train
    from charlstm.training.run import new_run

    folder = tmp_path_factory.mktemp("shared")
    corpus = folder / "play.txt"
    corpus.write_text(play_text(20_000), encoding="utf-8")
    tcfg = tiny_train_config(corpus, folder / "run", max_steps=40, eval_every=10, log_every=5, lr=2e-2)
    train(new_run(tcfg, ModelConfig(embedding=8, hidden=16, layers=2)))
    return folder / "run"


@pytest.fixture
def run_copy(shared_run: Path, tmp_path: Path) -> Path:
    """A copy of the shared run (and its corpus, at the same path) that a test may change."""
    return Path(shutil.copytree(shared_run, tmp_path / "run"))


@pytest.fixture
def v1_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The version-1 fixture run in a fresh folder that is also the working directory, since the
    run recorded its corpus as a relative path."""
    return _fixture_folder(1, tmp_path, monkeypatch)


@pytest.fixture
def old_folder(version: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """The fixture run of checkpoint format ``version`` (a test's parameter), as ``v1_folder``."""
    return _fixture_folder(version, tmp_path, monkeypatch)


def _fixture_folder(version: int, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = Path(shutil.copytree(FIXTURES / f"v{version}", tmp_path / f"v{version}"))
    monkeypatch.chdir(folder)
    return folder


class RunsCodeWhenUnpickled:
    """Pickled, this object would run a shell command when loaded: what a malicious checkpoint holds."""

    def __reduce__(self):
        return (os.system, ("touch PWNED",))


def full_disk(obj, f, *args, **kwargs):
    """A stand-in for ``torch.save`` that writes a little and then fails as a full disk does."""
    with open(f, "wb") as fh:
        fh.write(b"partial")
    raise OSError(28, "No space left on device")


@pytest.fixture(scope="session")
def wide_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A run with a wide model (1x1024, trained two steps): slow enough to sample that a test can
    act while it streams. Read it, never write to it."""
    from charlstm.training.loop import train
    from charlstm.training.run import new_run

    folder = tmp_path_factory.mktemp("wide")
    corpus = folder / "play.txt"
    corpus.write_text(play_text(5_000), encoding="utf-8")
    tcfg = tiny_train_config(corpus, folder / "run", max_steps=2, eval_every=2, save_every=2, eval_chars=500)
    train(new_run(tcfg, ModelConfig(embedding=8, hidden=1024, layers=1)))
    return folder / "run"


# (cell, layers, with byte tokens): every cell, 1 and 2 layers, with and without byte fallback
EXPORT_CELLS = [(c, n, b) for c in ("lstm", "gru", "peephole") for n in (1, 2) for b in (False, True)]


def export_id(case: tuple[str, int, bool]) -> str:
    cell, layers, with_bytes = case
    return f"{cell}-{layers}layer{'-bytes' if with_bytes else ''}"


@pytest.fixture(scope="session")
def export_models(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[str, int, bool], Path]:
    """Every cell, with 1 and 2 layers, with and without byte tokens: 12 small runs (hidden 10, not a
    multiple of 4, so exports pad), trained 30 steps each so that greedy text is not one repeated
    character. Read them, never write to them."""
    from charlstm.training.loop import train
    from charlstm.training.run import new_run

    folder = tmp_path_factory.mktemp("export")
    plain = folder / "plain.txt"
    plain.write_text(play_text(12_000), encoding="utf-8")
    accented = folder / "accented.txt"  # characters past --max-vocab 24 become byte tokens, some of two bytes
    text = play_text(12_000, seed=1).replace("o", "ø").replace("the", "thé").replace(".", "…")
    accented.write_text(text, encoding="utf-8")
    runs = {}
    for cell, layers, with_bytes in EXPORT_CELLS:
        out = folder / export_id((cell, layers, with_bytes))
        extra = dict(max_vocab=24) if with_bytes else {}
        tcfg = tiny_train_config(accented if with_bytes else plain, out, max_steps=30, eval_every=15, lr=2e-2, **extra)
        train(new_run(tcfg, ModelConfig(cell=cell, embedding=6, hidden=10, layers=layers)))
        runs[(cell, layers, with_bytes)] = out
    return runs
