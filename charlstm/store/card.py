"""A model's card: what a served or exported model says about itself (its name, shape, corpus,
loss and tokens), read off its checkpoint."""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from charlstm.store.checkpoint import Checkpoint


@dataclass(frozen=True)
class ModelCard:
    """What a served or exported model says about itself (``/v1/models``, the pages, the start line)."""

    id: str
    corpus: str
    cell: str
    layers: int
    hidden: int
    params: int
    vocab_size: int
    byte_fallback: bool
    val_loss: float | None
    precision: str  # the weights the step reads
    created: int
    tokens: tuple[str, ...]  # each token id's character (or byte, as bytes:\\xNN): what logit_bias and logprobs name


def run_name(path: str | os.PathLike[str], checkpoint: Checkpoint) -> str:
    """The model's id: its run directory's name (or the file's name without its suffix)."""
    given = Path(path)
    if given.is_dir():
        return given.resolve().name
    if checkpoint.path.name in ("best.pt", "last.pt"):
        return checkpoint.path.resolve().parent.name
    return checkpoint.path.stem


def model_card(model_id: str, checkpoint: Checkpoint, precision: str) -> ModelCard:
    """The card of ``checkpoint``'s model, named ``model_id``, sampled in ``precision``."""
    facts = checkpoint.describe()
    cfg = checkpoint.model_config
    corpus = (facts.get("corpus") or {}).get("path") or "unknown corpus"
    created = int(checkpoint.path.stat().st_mtime) if checkpoint.path.exists() else 0
    return ModelCard(
        model_id, Path(corpus).name, cfg.cell, cfg.layers, cfg.hidden, facts["params"], cfg.vocab_size,
        bool(facts.get("byte_fallback")), facts.get("val_loss"), precision, created, checkpoint.vocab.token_names(),
    )  # fmt: skip
