"""Checkpoints: self-contained, atomic on write, ``weights_only`` on read.

A checkpoint is one ``torch.save`` dict of tensors and plain Python values::

    format_version  int              FORMAT_VERSION
    model_config    dict             ModelConfig.to_dict()
    train_config    dict             TrainConfig.to_dict()
    vocab           str              the sorted characters; id i is vocab[i]
    model           state dict       CharLSTM weights
    optimizer       state dict       AdamW moments and step counts (None in exports)
    progress        dict             step, epoch, chunk, elapsed, best/last val loss, ...
    rng             dict             CPU (and CUDA) generator states
    hidden          [h, c]           carried LSTM state, each (layers, B, H)
    metrics         list[dict]       every line written to metrics.jsonl
"""

from __future__ import annotations

import json
import pickle
import zipfile
from pathlib import Path
from typing import Any

import torch

from charlstm.config import ModelConfig, TrainConfig
from charlstm.corpus import CharVocab, atomic_path
from charlstm.errors import UserError
from charlstm.model import CharLSTM, first_stream

FORMAT_VERSION = 1
BEST, LAST = "best.pt", "last.pt"
WARM_H, WARM_C = "sampling.warm_h", "sampling.warm_c"  # safetensors names of the warm start state
REQUIRED_KEYS = ("format_version", "model_config", "vocab", "model")


def save_checkpoint(path: Path, payload: dict[str, Any]) -> None:
    """Write ``payload`` to ``path`` atomically (temp file in the same folder, fsync, rename)."""
    with atomic_path(Path(path)) as tmp:
        torch.save(payload, tmp)


def find_checkpoint(path: str | Path, prefer: str = BEST) -> Path:
    """A checkpoint file, or a run directory meaning its ``prefer`` file (the other if absent)."""
    p = Path(path).expanduser()
    if p.is_dir():
        other = LAST if prefer == BEST else BEST
        for name in (prefer, other):
            if (p / name).is_file():
                return p / name
        raise UserError(
            f"run directory {str(p)!r} holds no {BEST} or {LAST}, expected a folder written by charlstm train"
        )
    if not p.exists():
        raise UserError(f"checkpoint {str(p)!r} does not exist, expected a .pt file or a run directory")
    return p


def load_checkpoint(path: str | Path, prefer: str = BEST) -> dict[str, Any]:
    """Read a checkpoint safely: tensors and plain types only, never arbitrary objects."""
    p = find_checkpoint(path, prefer)
    if p.suffix == ".safetensors":
        return validate_payload(load_safetensors(p), p)
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; anything else is not ours
        raise UserError(f"{str(p)!r} is not a readable charlstm checkpoint (truncated, corrupted or another format)")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        blocked = next((ln.strip() for ln in str(e).splitlines() if "GLOBAL" in ln), "non-tensor objects")
        raise UserError(
            f"{str(p)!r} refused: it holds objects that are not plain data ({blocked}) and loading them "
            f"could run code; expected a checkpoint written by charlstm"
        ) from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, ValueError, OSError, KeyError) as e:
        raise UserError(
            f"{str(p)!r} is not a readable charlstm checkpoint (truncated or corrupted: "
            f"{str(e).splitlines()[0][:120] if str(e) else type(e).__name__})"
        ) from None
    return validate_payload(payload, p)


def validate_payload(payload: Any, p: Path) -> dict[str, Any]:
    """Check that a loaded object is a charlstm checkpoint of a version this code reads."""
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise UserError(f"{str(p)!r} is not a charlstm checkpoint (it lacks the model, configs or vocabulary)")
    version = payload["format_version"]
    if version != FORMAT_VERSION:
        raise UserError(
            f"{str(p)!r} has checkpoint format version {version}, expected {FORMAT_VERSION}; "
            f"it was written by another version of charlstm"
        )
    payload["_path"] = str(p)
    return payload


def model_from_payload(payload: dict[str, Any], device: torch.device | str = "cpu") -> tuple[CharLSTM, CharVocab]:
    """Rebuild the model (in eval mode) and its vocabulary from a loaded checkpoint."""
    config = ModelConfig.from_dict(payload["model_config"])
    model = CharLSTM(config)
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError, TypeError) as e:
        raise UserError(f"{payload.get('_path')!r} has weights that do not fit its own config ({e})") from None
    return model.to(device).eval(), CharVocab(payload["vocab"])


def warm_state_of(payload: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor] | None:
    """A realistic starting state for sampling: stream 0's carried training state, (layers, 1, H) each.

    The model learned from states carried through running text; from an all-zero state it
    predicts poorly for the first characters, so sampling starts from a state it knows.
    """
    hidden = payload.get("hidden")
    if not hidden or len(hidden) != 2:
        return None
    return first_stream((hidden[0], hidden[1]))


def train_config_of(payload: dict[str, Any]) -> TrainConfig:
    return TrainConfig.from_dict(payload.get("train_config", {}))


def describe(payload: dict[str, Any]) -> dict[str, Any]:
    """A JSON-ready summary of a loaded checkpoint, for ``charlstm info``."""
    progress = payload.get("progress") or {}
    params = sum(t.numel() for t in payload["model"].values())
    best = progress.get("best_val_loss")
    path = Path(payload["_path"])
    return {
        "path": str(path),
        "format_version": payload["format_version"],
        "step": progress.get("step"),
        "epoch": payload.get("epoch"),
        "elapsed": progress.get("elapsed"),
        "val_loss": best if best is not None and best != float("inf") else None,
        "last_val_loss": progress.get("last_val_loss") if progress.get("last_val_loss") != float("inf") else None,
        "params": params,
        "vocab_size": len(payload["vocab"]),
        "vocab": payload["vocab"],
        "precision": progress.get("precision"),
        "corpus": payload.get("corpus"),
        "config": {"model": payload["model_config"], "train": payload.get("train_config")},
        # resume always continues from the run's last.pt, whichever file was inspected
        "resume": f"charlstm train --resume {path.parent}" if payload.get("optimizer") is not None else None,
    }


# ----------------------------------------------------------------------------- safetensors
def export_safetensors(payload: dict[str, Any], out: str | Path) -> Path:
    """Write the weights alone to ``out`` with the configs and vocabulary as JSON metadata."""
    from safetensors.torch import save_file

    out = Path(out)
    if out.suffix != ".safetensors":
        raise UserError(f"export target {str(out)!r} must end in .safetensors")
    progress = payload.get("progress") or {}
    metadata = {
        "format": "charlstm",
        "format_version": str(FORMAT_VERSION),
        "model_config": json.dumps(payload["model_config"]),
        "train_config": json.dumps(payload.get("train_config") or {}),
        "vocab": json.dumps(payload["vocab"]),
        "progress": json.dumps(
            {
                k: progress[k]
                for k in ("step", "elapsed", "best_val_loss", "last_val_loss", "precision", "corpus_sha256")
                if k in progress
            }
        ),
    }
    tensors = {k: v.contiguous() for k, v in payload["model"].items()}
    warm = warm_state_of(payload)
    if warm is not None:  # kept beside the weights so exported models sample as well as checkpoints
        tensors[WARM_H], tensors[WARM_C] = warm
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=metadata)
    return out


def load_safetensors(p: Path) -> dict[str, Any]:
    """A payload (weights, configs, vocabulary; no optimizer) from an exported file."""
    from safetensors import SafetensorError, safe_open

    try:
        with safe_open(str(p), framework="pt", device="cpu") as f:
            meta = f.metadata() or {}
            tensors = {k: f.get_tensor(k) for k in f.keys()}
        warm = [tensors.pop(k) for k in (WARM_H, WARM_C) if k in tensors]
    except (SafetensorError, OSError, ValueError) as e:
        raise UserError(f"{str(p)!r} is not a readable safetensors file ({e})") from None
    if meta.get("format") != "charlstm":
        raise UserError(f"{str(p)!r} is a safetensors file but not a charlstm export (no charlstm metadata)")
    try:
        progress = json.loads(meta.get("progress", "{}"))
        return {
            "format_version": int(meta["format_version"]),
            "model_config": json.loads(meta["model_config"]),
            "train_config": json.loads(meta.get("train_config", "{}")),
            "vocab": json.loads(meta["vocab"]),
            "model": tensors,
            "hidden": warm if len(warm) == 2 else None,
            "optimizer": None,
            "progress": progress,
        }
    except (KeyError, ValueError) as e:
        raise UserError(f"{str(p)!r} has damaged charlstm metadata ({e})") from None
