"""The checkpoint format, owned here alone: :class:`Checkpoint` turns what a run saves into the
dict written to disk and back, and every reader and writer goes through it.

A checkpoint is one ``torch.save`` dict of tensors and plain Python values (format 5)::

    format_version  int                FORMAT_VERSION
    model_config    dict               ModelConfig.to_dict()
    train_config    dict               TrainConfig.to_dict()
    vocab           str                the characters with their own token, sorted; id i is vocab[i]
    byte_fallback   bool               whether byte tokens follow (see vocab.py), for other characters
    model           dict[str, Tensor]  CharLSTM state dict: in best.pt, the averaged weights when
                                       they evaluated best (progress "best_averaged"), with their own hidden
    averaged        dict | None        the running average of the weights (--average), a CharLSTM
                                       state dict in fp32; None without averaging
    optimizer       dict | None        AdamW state dict (None in exports)
    progress        dict               RunState.to_dict(): step, cursor (epoch, chunk, chunks_per_epoch),
                                       time, losses, how many lines of metrics.jsonl it has seen
    rng             dict | None        {"torch": ByteTensor, "cuda": ByteTensor on CUDA runs}; with several
                                       processes also "ranks" and "cuda_ranks", one state each
    hidden          list | None        carried state: [h, c] ([h] for a GRU), each (layers, B, H); (layers, 1, H)
                                       in a best.pt of averaged weights (their own state)
    corpus          dict | None        the training text: "path" (as given), "sha256", and what
                                       reading found: "chars", "tokens", "distinct", "own_coverage",
                                       "files", "skipped_files", "dropped_chars"
    lineage         dict | None        the base of a run started with --init-from: "path", "sha256"
                                       (of the file), "corpus", "corpus_sha256", "steps", and "base"
                                       (its own lineage, or None); None for a run from scratch. Files
                                       written before fine-tuning existed lack the key: None
    dynamic         dict | None        dynamic evaluation's rates ("lr", "decay", "segment", where fitted),
                                       written by the first eval --dynamic; files without it: None

Files are read with ``torch.load(weights_only=True)``: anything but tensors and plain types is
refused and nothing in a file runs. Older formats are read through explicit migrations
(:data:`MIGRATIONS`); a newer one is refused with a message. Exports are ``.safetensors``
files: the weights, and the rest (no optimizer, RNG or metrics) as JSON metadata.
"""

from __future__ import annotations

import json
import math
import pickle
import shlex
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch

from charlstm.choices import Cell
from charlstm.config import ModelConfig, TrainConfig
from charlstm.data.vocab import CharVocab
from charlstm.errors import UserError
from charlstm.files import atomic_path, output_file
from charlstm.net.model import CharLSTM, State, first_stream
from charlstm.store.migrations import MIGRATIONS
from charlstm.validate import DictRoundTrip, shown

FORMAT_VERSION = 5
BEST, LAST = "best.pt", "last.pt"
WARM_H, WARM_C = "sampling.warm_h", "sampling.warm_c"  # safetensors names of the warm start state
REQUIRED_KEYS = ("format_version", "model_config", "vocab", "model")
EXPORTED_PROGRESS = (
    "step",
    "epoch",
    "chunk",
    "chunks_per_epoch",
    "elapsed",
    "best_val_loss",
    "last_val_loss",
    "precision",
)
# JSON metadata of an export, beside "format" and "format_version" (format 1 had model_config,
# train_config, vocab and progress); formats 2 and 3 also wrote "epoch", which migrates into progress
_THE_MODEL = ("model_config", "train_config", "vocab", "byte_fallback")
EXPORTED_METADATA = (*_THE_MODEL, "progress", "corpus", "lineage", "dynamic")
READ_METADATA = (*EXPORTED_METADATA, "epoch")


@dataclass
class RunState(DictRoundTrip):
    """Where a run stands; saved as the checkpoint's ``progress``.

    ``from_dict`` tolerates fields added or dropped between versions, so that a field added
    here never makes an older ``last.pt`` unreadable.
    """

    step: int = 0
    epoch: int = 0  # completed passes over the training split
    chunk: int = 0  # next chunk of the current pass
    chunks_per_epoch: int = 0  # chunks in a pass (0: not known, in a migrated checkpoint at a pass's start)
    elapsed: float = 0.0  # seconds trained, summed over resumed sessions
    best_val_loss: float = math.inf
    last_val_loss: float = math.inf
    plateau_scale: float = 1.0
    loss_sum: float = 0.0  # training loss in nats, summed since the last log line
    loss_count: int = 0  # characters predicted since the last log line
    precision: str = "fp32"
    sizing: dict[str, Any] = field(default_factory=dict)  # the preset chosen at the start (presets.Sizing)
    averaged_val_loss: float = math.inf  # the averaged weights' loss at the last evaluation of them
    best_averaged: bool = False  # whether the best loss so far is the averaged weights'
    metrics_lines: int = 0  # records of metrics.jsonl written up to this state: resume cuts the log there

    @property
    def passes(self) -> float:
        """Passes over the training split, fractional."""
        return self.epoch + (self.chunk / self.chunks_per_epoch if self.chunks_per_epoch else 0.0)


@dataclass(frozen=True)
class Lineage:
    """The base a run started from (``--init-from``), as its checkpoints record it."""

    path: str  # the base file, as it was read
    sha256: str  # of that file
    steps: int  # the base's steps
    corpus: str | None = None  # the base's corpus, as it was given
    corpus_sha256: str | None = None
    base: Lineage | None = None  # the base's own lineage, when it was fine-tuned too

    def to_dict(self) -> dict[str, Any]:
        """Plain values, the base's own lineage nested."""
        return {**asdict(self), "base": self.base.to_dict() if self.base else None}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Lineage:
        base = data.get("base")
        return cls(
            str(data["path"]),
            str(data["sha256"]),
            int(data.get("steps") or 0),
            data.get("corpus"),
            data.get("corpus_sha256"),
            cls.from_dict(base) if base else None,
        )


@dataclass
class Checkpoint:
    """Everything a run saves: enough to sample, evaluate and (with optimizer and RNG) resume."""

    model_config: ModelConfig
    vocab: CharVocab
    model: dict[str, torch.Tensor]
    train_config: TrainConfig = field(default_factory=TrainConfig)
    progress: RunState = field(default_factory=RunState)
    optimizer: dict[str, Any] | None = None
    rng: dict[str, torch.Tensor] | None = None
    hidden: State | None = None
    corpus: dict[str, Any] | None = None
    averaged: dict[str, torch.Tensor] | None = None
    lineage: Lineage | None = None  # the base of a fine-tuning run (training/finetune.py)
    dynamic: dict[str, Any] | None = None  # dynamic evaluation's rates, fitted at first use (training/dynamic.py)
    path: Path | None = None  # not saved: the file it was read from
    file_version: int = FORMAT_VERSION  # not saved: the format that file was written in

    KEYS: ClassVar[tuple[str, ...]] = (
        "format_version",
        "model_config",
        "train_config",
        "vocab",
        "byte_fallback",
        "model",
        "optimizer",
        "progress",
        "rng",
        "hidden",
        "corpus",
        "averaged",
        "lineage",
        "dynamic",
    )

    def to_dict(self) -> dict[str, Any]:
        """The dict that ``torch.save`` writes, with exactly :attr:`KEYS`."""
        return {
            "format_version": FORMAT_VERSION,
            "model_config": self.model_config.to_dict(),
            "train_config": self.train_config.to_dict(),
            "vocab": self.vocab.to_string(),
            "byte_fallback": self.vocab.byte_fallback,
            "model": self.model,
            "optimizer": self.optimizer,
            "progress": self.progress.to_dict(),
            "rng": self.rng,
            "hidden": list(self.hidden) if self.hidden is not None else None,
            "corpus": self.corpus,
            "averaged": self.averaged,
            "lineage": self.lineage.to_dict() if self.lineage else None,
            "dynamic": self.dynamic,
        }

    @classmethod
    def from_dict(cls, payload: Any, path: Path) -> Checkpoint:
        """Rebuild from a loaded dict of any format this version reads, migrating older ones."""
        version = _check_version(payload, path)
        while payload["format_version"] < FORMAT_VERSION:
            payload = MIGRATIONS[payload["format_version"]](payload)
        hidden = payload.get("hidden")
        model_config = payload.get("model_config")
        cell = model_config.get("cell", Cell.LSTM.value) if isinstance(model_config, dict) else Cell.LSTM.value
        if not isinstance(cell, str) or cell not in Cell.values():
            raise UserError(
                f"{str(path)!r} holds a model with a cell this version of charlstm does not know ({shown(cell)}, "
                f"expected one of {', '.join(Cell.values())}); upgrade charlstm to read it"
            )
        try:
            return cls(
                model_config=ModelConfig.from_dict(payload["model_config"]),
                vocab=CharVocab(payload["vocab"], bool(payload.get("byte_fallback", False))),
                model=dict(payload["model"]),
                train_config=TrainConfig.from_dict(payload.get("train_config") or {}),
                progress=RunState.from_dict(payload.get("progress") or {}),
                optimizer=payload.get("optimizer"),
                rng=payload.get("rng"),
                hidden=tuple(hidden) if hidden else None,
                corpus=payload.get("corpus"),
                averaged=dict(payload["averaged"]) if payload.get("averaged") else None,
                lineage=Lineage.from_dict(payload["lineage"]) if payload.get("lineage") else None,
                dynamic=payload.get("dynamic") or None,
                path=path,
                file_version=version,
            )
        except (TypeError, ValueError, AttributeError, KeyError) as e:  # UserError is a ValueError
            raise UserError(f"{str(path)!r} holds a damaged charlstm checkpoint ({e})") from None

    def save(self, path: Path) -> None:
        """Write to ``path`` atomically (temporary file in the same folder, fsync, rename)."""
        with atomic_path(Path(path)) as tmp:
            torch.save(self.to_dict(), tmp)

    @property
    def resumable(self) -> bool:
        """Whether this is a run's ``last.pt`` with the optimizer and RNG state to continue from."""
        return self.path is not None and self.path.name == LAST and None not in (self.optimizer, self.rng)

    def build_model(self, device: torch.device | str = "cpu") -> CharLSTM:
        """The model with its weights, in eval mode, on ``device``."""
        if self.model_config.vocab_size != len(self.vocab):
            raise UserError(
                f"{str(self.path)!r} has a model of {self.model_config.vocab_size} tokens but a vocabulary of "
                f"{len(self.vocab)}; it is damaged, or was written by a version of charlstm this one cannot read"
            )
        model = CharLSTM(self.model_config)
        try:
            model.load_state_dict(self.model)
        except (RuntimeError, KeyError, TypeError) as e:
            reason = " ".join(str(e).split())  # torch's message spans lines: one line for the user
            raise UserError(f"{str(self.path)!r} has weights that do not fit its own config ({reason})") from None
        return model.to(device).eval()

    def warm_state(self) -> State | None:
        """A realistic starting state for sampling: stream 0's carried training state, (layers, 1, H) each.

        The model learned from states carried through running text; from an all-zero state it
        predicts poorly for the first characters, so sampling starts from a state it knows.
        """
        return first_stream(self.hidden) if self.hidden is not None else None

    def describe(self) -> dict[str, Any]:
        """A JSON-ready summary, for ``charlstm info``."""
        p = self.progress
        finite = lambda v: v if v is not None and math.isfinite(v) else None  # noqa: E731
        return {
            "path": str(self.path),
            "format_version": self.file_version,
            "step": p.step,
            "epoch": p.passes if p.chunks_per_epoch or p.epoch else None,  # None: an old export kept none
            "elapsed": p.elapsed,
            "val_loss": finite(p.best_val_loss),
            "last_val_loss": finite(p.last_val_loss),
            "averaged_val_loss": finite(p.averaged_val_loss),
            "best_averaged": p.best_averaged,
            "params": sum(t.numel() for t in self.model.values()),
            "vocab_size": len(self.vocab),
            "vocab": self.vocab.to_string(),
            "own_tokens": len(self.vocab.chars),
            "byte_fallback": self.vocab.byte_fallback,
            "own_coverage": (self.corpus or {}).get("own_coverage"),
            "precision": p.precision,
            "sizing": p.sizing or None,  # the preset chosen for the budget (presets.Sizing)
            "corpus": self.corpus,
            "lineage": self.lineage.to_dict() if self.lineage else None,
            "dynamic": self.dynamic,
            "config": {"model": self.model_config.to_dict(), "train": self.train_config.to_dict()},
            # resume always continues from the run's last.pt, whichever file was inspected
            "resume": resume_command(self.path.parent) if self.optimizer is not None and self.path else None,
        }


def resume_command(run_dir: Path) -> str:
    """The command line that continues the run in ``run_dir``, quoted for a POSIX shell."""
    return f"charlstm train --resume {shlex.quote(str(run_dir))}"


def _check_version(payload: Any, path: Path) -> int:
    """The format version of a loaded object, refusing what is not a charlstm checkpoint we read."""
    if not isinstance(payload, dict) or any(k not in payload for k in REQUIRED_KEYS):
        raise UserError(f"{str(path)!r} is not a charlstm checkpoint (it lacks the model, configs or vocabulary)")
    version = payload["format_version"]
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise UserError(f"{str(path)!r} is not a charlstm checkpoint (format version {version!r})")
    if version > FORMAT_VERSION:
        raise UserError(
            f"{str(path)!r} has checkpoint format version {version}, expected {FORMAT_VERSION} or older; "
            f"it was written by a newer version of charlstm, so upgrade charlstm to read it"
        )
    return version


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
        raise UserError(f"checkpoint {str(p)!r} does not exist, expected a .pt or .safetensors file or a run directory")
    return p


def load_checkpoint(path: str | Path, prefer: str = BEST, mmap: bool = False) -> Checkpoint:
    """Read a checkpoint (``.pt``, ``.safetensors`` or a run directory) safely, in any format we read.
    ``mmap``: map a ``.pt`` file's tensors instead of reading them, for a look at its configs,
    progress and tensor shapes that costs milliseconds whatever the model's size."""
    p = find_checkpoint(path, prefer)
    if p.suffix == ".safetensors":
        return Checkpoint.from_dict(_read_safetensors(p), p)
    if not zipfile.is_zipfile(p):  # torch.save writes a zip archive; anything else is not ours
        raise UserError(f"{str(p)!r} is not a readable charlstm checkpoint (truncated, corrupted or another format)")
    try:
        payload = torch.load(p, map_location="cpu", weights_only=True, mmap=mmap)
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
    return Checkpoint.from_dict(payload, p)


def export_safetensors(checkpoint: Checkpoint, out: str | Path, overwrite: bool = False) -> Path:
    """Write the weights alone to ``out``, with configs, vocabulary and progress as JSON metadata;
    an existing ``out`` is replaced only with ``overwrite``."""
    from safetensors.torch import save_file

    out = Path(out).expanduser()
    if out.suffix != ".safetensors":
        raise UserError(f"export target {str(out)!r} must end in .safetensors (sample, eval and info know it by that)")
    out = output_file(out, overwrite, "export target", "the path of a .safetensors file")
    saved = checkpoint.to_dict()
    progress = {k: saved["progress"][k] for k in EXPORTED_PROGRESS}
    meta = {k: json.dumps(progress if k == "progress" else saved[k]) for k in EXPORTED_METADATA}
    meta.update({"format": "charlstm", "format_version": str(FORMAT_VERSION)})
    tensors = {k: v.contiguous() for k, v in checkpoint.model.items()}
    warm = checkpoint.warm_state()
    if warm is not None:  # kept beside the weights so exported models sample as well as checkpoints
        tensors.update(zip((WARM_H, WARM_C), warm, strict=False))
    with atomic_path(out) as tmp:
        save_file(tensors, str(tmp), metadata=meta)
    return out


def _read_safetensors(p: Path) -> dict[str, Any]:
    """The saved dict (in the version it was written) of an exported file: no optimizer or RNG."""
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
        payload = {k: json.loads(meta[k]) for k in READ_METADATA if k in meta}  # other tools may add keys
        payload["format_version"] = int(meta["format_version"])
    except (KeyError, ValueError) as e:
        raise UserError(f"{str(p)!r} has damaged charlstm metadata ({e})") from None
    return {**payload, "model": tensors, "hidden": warm or None}
