"""Migrations of the checkpoint format: each turns the saved dict of one format version into the
next's (``MIGRATIONS[n]``: format n to n + 1), so that ``checkpoint.py`` reads every older file."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

FRACTION_STEPS = 10**6  # an old export's fractional epoch, kept as chunks of a pass this many


def _v1_to_v2(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 1 kept the metrics beside ``progress`` and the corpus hash inside it (and, in a
    checkpoint, again under ``corpus``); format 2 keeps each in one place. Format 1 summed the
    training loss as a mean per step, format 2 in nats over characters; and every character of a
    format 1 corpus had its own token, which ``max_vocab`` now says."""
    progress = dict(payload.get("progress") or {})
    sha = progress.pop("corpus_sha256", None)
    progress["metrics"] = list(payload.get("metrics") or [])
    train = dict(payload.get("train_config") or {})
    chunk = train.get("batch_size", 64) * train.get("seq_len", 128)  # format 1 summed per-step means, one a step
    progress["loss_sum"] = progress.get("loss_sum", 0.0) * chunk
    progress["loss_count"] = progress.get("loss_count", 0) * chunk
    train.setdefault("max_vocab", len(payload.get("vocab") or ""))  # every character had its own token
    corpus = payload.get("corpus") or ({"sha256": sha} if sha else None)
    rest = {k: v for k, v in payload.items() if k not in ("metrics", "device_type")}
    return {**rest, "format_version": 2, "progress": progress, "corpus": corpus, "train_config": train}


def _v2_to_v3(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 2 had no weight drop or embedding dropout: its models trained without them, where
    format 3's defaults turn weight drop on."""
    model_config = {"weight_drop": 0.0, "embed_dropout": 0.0, **(payload.get("model_config") or {})}
    return {**payload, "format_version": 3, "model_config": model_config}


def _v3_to_v4(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 3 kept a copy of the metrics log in ``progress`` and the fractional epoch beside it;
    format 4 keeps how many records of the log belong to the checkpoint (the log owns them) and
    the size of a pass, from which the epoch follows."""
    progress = dict(payload.get("progress") or {})
    progress["metrics_lines"] = len(progress.pop("metrics", None) or [])
    if progress.get("sizing"):  # the budget, once in words, is whether the default epochs stood for one
        sizing = dict(progress["sizing"])
        sizing["default_budget"] = sizing.pop("budget", "the budget") != "the budget"
        progress["sizing"] = sizing
    rest = {k: v for k, v in payload.items() if k != "epoch"}
    epoch, done, chunk = payload.get("epoch"), progress.get("epoch", 0), progress.get("chunk", 0)
    if epoch is not None and "chunk" not in progress:  # an export, which kept no cursor: the fraction alone
        whole = int(epoch)
        progress.update(epoch=whole, chunk=round((epoch - whole) * FRACTION_STEPS), chunks_per_epoch=FRACTION_STEPS)
    elif epoch is not None and chunk and epoch > done:  # epoch = done + chunk / chunks_per_epoch
        progress["chunks_per_epoch"] = round(chunk / (epoch - done))
    return {**rest, "format_version": 4, "progress": progress}


def _v4_to_v5(payload: dict[str, Any]) -> dict[str, Any]:
    """Format 4 had no averaged weights: its runs trained without them."""
    return {**payload, "format_version": 5, "averaged": None}


MIGRATIONS: dict[int, Callable[[dict[str, Any]], dict[str, Any]]] = {
    1: _v1_to_v2,
    2: _v2_to_v3,
    3: _v3_to_v4,
    4: _v4_to_v5,
}
