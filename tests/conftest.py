"""Shared fixtures: small corpora made on the fly and tiny model/train configs (CPU, seconds)."""

from __future__ import annotations

import random
from pathlib import Path

import pytest

from charlstm.config import ModelConfig, TrainConfig

WORDS = ["the", "king", "queen", "sword", "night", "love", "my", "lord", "and", "of", "to", "is", "thou", "art"]


def play_text(chars: int, seed: int = 0) -> str:
    """A toy play: speaker names in capitals, a colon, short lines of words."""
    rng = random.Random(seed)
    parts: list[str] = []
    size = 0
    while size < chars:
        speaker = rng.choice(["KING", "QUEEN", "FOOL"])
        line = " ".join(rng.choice(WORDS) for _ in range(rng.randint(3, 8)))
        block = f"{speaker}:\n{line.capitalize()}.\n\n"
        parts.append(block)
        size += len(block)
    return "".join(parts)[:chars]


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
    return TrainConfig(
        corpus=str(corpus_file),
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
        out=str(tmp_path / "run"),
    )
