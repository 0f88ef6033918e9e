"""Configuration dataclasses, one per concern, validated once when they are built.

Field names match the command-line options (``seq_len`` is ``--seq-len``) and the keywords of
the Python API, so a validation message can name the option the user typed. Every config is
saved inside every checkpoint as a plain dict (``to_dict``) and rebuilt with ``from_dict``,
which tolerates fields added or dropped between versions.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields

from charlstm.errors import UserError

SCHEDULES = ("cosine", "step", "plateau", "constant")
DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "fp32", "bf16")
UNKNOWN_POLICIES = ("error", "skip")
SPLITS = ("all", "train", "val")
BYTE_FALLBACK = ("auto", "on")
CELLS = ("lstm", "gru", "peephole")
PRESETS = ("auto", "micro", "tiny", "small", "medium")  # presets.py holds what each sets
DEFAULT_MAX_VOCAB = 128  # characters with their own token; chosen by measurement, see benchmarks/SWEEP.md
MAX_SAMPLES = 100_000


def option(name: str) -> str:
    """The command-line spelling of a config field: ``seq_len`` -> ``--seq-len``."""
    return "--" + name.replace("_", "-")


def _fail(name: str, value: object, accepted: str) -> UserError:
    return UserError(f"{option(name)} {value!r} is not valid, expected {accepted}")


def _positive_int(cfg: object, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise _fail(name, value, "a whole number greater than 0")


def _optional_positive(cfg: object, *names: str) -> None:
    for name in names:
        value = getattr(cfg, name)
        if value is None:
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise _fail(name, value, "a number greater than 0")
        if not math.isfinite(value) or value <= 0:
            raise _fail(name, value, "a number greater than 0")


def _choice(cfg: object, name: str, choices: tuple[str, ...]) -> None:
    value = getattr(cfg, name)
    if value not in choices:
        raise _fail(name, value, "one of " + ", ".join(choices))


MAX_SEED = 2**63 - 1


def _seed(cfg: object) -> None:
    value = cfg.seed
    if value is None:
        return
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_SEED:
        raise _fail("seed", value, f"a whole number from 0 to {MAX_SEED}")


def _finite(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


class DictRoundTrip:
    """``to_dict``/``from_dict`` for a dataclass saved in checkpoints as a plain dict."""

    def to_dict(self) -> dict:
        return asdict(self)  # type: ignore[call-overload]

    @classmethod
    def from_dict(cls, data: dict):
        """Rebuild from a saved dict: keys this version does not know are ignored, and fields the
        dict lacks (added after it was written) take their defaults."""
        known = {f.name for f in fields(cls)}  # type: ignore[arg-type]
        return cls(**{k: v for k, v in data.items() if k in known})


@dataclass(frozen=True)
class ModelConfig(DictRoundTrip):
    """Shape of the network: embedding -> stacked recurrent cells -> linear head over the vocabulary."""

    vocab_size: int = 65
    embedding: int = 64
    hidden: int = 512
    layers: int = 1
    dropout: float = 0.0
    cell: str = "lstm"  # "lstm", "gru" or "peephole"
    weight_drop: float = 0.25  # DropConnect on the recurrent weights, one mask per chunk (AWD-LSTM)
    embed_dropout: float = 0.0  # drops whole characters' embeddings, one mask per chunk

    def __post_init__(self) -> None:
        _positive_int(self, "vocab_size", "embedding", "hidden", "layers")
        _choice(self, "cell", CELLS)
        for name in ("dropout", "weight_drop", "embed_dropout"):
            if not _finite(getattr(self, name)) or not 0 <= getattr(self, name) < 1:
                raise _fail(name, getattr(self, name), "a number in [0, 1)")


@dataclass(frozen=True)
class TrainConfig(DictRoundTrip):
    """Data, optimisation, stopping and output settings of one training run."""

    corpus: str = "tinyshakespeare"
    encoding: str = "utf-8"
    skip_bad_files: bool = False
    max_vocab: int = DEFAULT_MAX_VOCAB
    byte_fallback: str = "auto"
    val_fraction: float = 0.1
    preset: str = "auto"  # model size and regularisation for the budget: presets.py
    seq_len: int = 128
    batch_size: int = 64
    lr: float = 3e-2
    weight_decay: float = 0.2
    grad_clip: float = 1.0
    schedule: str = "cosine"
    warmup_steps: int = 50
    min_lr_ratio: float = 0.05
    max_steps: int | None = None
    epochs: float | None = None
    max_time: float | None = None
    eval_every: int = 250
    eval_chars: int = 500_000  # of the validation split, per evaluation: 3.8 s of a 1x512 model on 2 cores
    save_every: int = 250
    log_every: int = 10
    sample_chars: int = 200
    seed: int = 1337
    device: str = "auto"
    precision: str = "auto"
    out: str | None = None

    def __post_init__(self) -> None:
        if not _finite(self.val_fraction) or not 0 < self.val_fraction < 1:
            raise _fail("val_fraction", self.val_fraction, "a number between 0 and 1")
        _positive_int(self, "seq_len", "batch_size", "eval_every", "save_every", "log_every", "max_vocab", "eval_chars")
        _choice(self, "byte_fallback", BYTE_FALLBACK)
        _choice(self, "preset", PRESETS)
        if not _finite(self.lr) or self.lr <= 0:
            raise _fail("lr", self.lr, "a learning rate greater than 0")
        for name in ("weight_decay", "grad_clip"):
            if not _finite(getattr(self, name)) or getattr(self, name) < 0:
                raise _fail(name, getattr(self, name), "a number >= 0 (0 turns it off)")
        if isinstance(self.warmup_steps, bool) or not isinstance(self.warmup_steps, int):
            raise _fail("warmup_steps", self.warmup_steps, "a whole number >= 0")
        if self.warmup_steps < 0:
            raise _fail("warmup_steps", self.warmup_steps, "a whole number >= 0")
        if not _finite(self.min_lr_ratio) or not 0 <= self.min_lr_ratio <= 1:
            raise _fail("min_lr_ratio", self.min_lr_ratio, "a number in [0, 1]")
        _optional_positive(self, "max_steps", "epochs", "max_time")
        if self.max_steps is not None and int(self.max_steps) != self.max_steps:
            raise _fail("max_steps", self.max_steps, "a whole number greater than 0")
        if isinstance(self.sample_chars, bool) or not isinstance(self.sample_chars, int):
            raise _fail("sample_chars", self.sample_chars, "a whole number >= 0")
        if self.sample_chars < 0:
            raise _fail("sample_chars", self.sample_chars, "a whole number >= 0")
        _seed(self)
        _choice(self, "schedule", SCHEDULES)
        _choice(self, "device", DEVICES)
        _choice(self, "precision", PRECISIONS)
        if not self.corpus:
            raise _fail("corpus", self.corpus, "a corpus name or a path to a UTF-8 text file")

    @property
    def has_budget(self) -> bool:
        """Whether any stopping criterion was given."""
        return any(v is not None for v in (self.max_steps, self.epochs, self.max_time))


DEFAULT_EPOCHS = 10.0  # used when none of --max-steps, --epochs, --max-time is given


@dataclass(frozen=True)
class SampleConfig(DictRoundTrip):
    """How text is drawn from a trained model."""

    prompt: str = ""
    length: int = 500
    temperature: float = 0.8
    top_k: int | None = None
    top_p: float | None = None
    seed: int | None = None
    num_samples: int = 1
    unknown: str = "error"
    precision: str = "auto"

    def __post_init__(self) -> None:
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 0:
            raise _fail("length", self.length, "a whole number >= 0")
        if not _finite(self.temperature) or self.temperature < 0:
            raise _fail("temperature", self.temperature, "a number >= 0 (0 means greedy)")
        if self.top_k is not None and (
            isinstance(self.top_k, bool) or not isinstance(self.top_k, int) or self.top_k < 0
        ):
            raise _fail("top_k", self.top_k, "a whole number >= 0 (0 turns it off)")
        if self.top_p is not None and (not _finite(self.top_p) or not 0 < self.top_p <= 1):
            raise _fail("top_p", self.top_p, "a number in (0, 1]")
        _positive_int(self, "num_samples")
        if self.num_samples > MAX_SAMPLES:  # drawn side by side: each one holds its own state
            raise _fail("num_samples", self.num_samples, f"at most {MAX_SAMPLES:,} per call")
        _seed(self)
        _choice(self, "unknown", UNKNOWN_POLICIES)
        _choice(self, "precision", PRECISIONS)


@dataclass(frozen=True)
class EvalConfig(DictRoundTrip):
    """What ``charlstm eval`` measures: a checkpoint's own corpus or another text, and which part."""

    corpus: str | None = None  # None: the checkpoint's own corpus
    split: str | None = None  # None: "val" on the checkpoint's own corpus, "all" on another text
    encoding: str | None = None  # None: the checkpoint's encoding on its own corpus, utf-8 on another
    seq_len: int = 256
    unknown: str = "error"  # characters a model without byte fallback cannot encode: "error" or "skip"
    skip_bad_files: bool = False
    max_chars: int | None = None  # None: every character of the text

    def __post_init__(self) -> None:
        if self.split is not None:
            _choice(self, "split", SPLITS)
        _positive_int(self, "seq_len")
        _choice(self, "unknown", UNKNOWN_POLICIES)
        if self.max_chars is not None:
            _positive_int(self, "max_chars")

    @property
    def part(self) -> str:
        """The split measured once the default is applied."""
        return self.split or ("all" if self.corpus else "val")


EXPLAIN_VALUES = ("cell", "hidden")
EXPLAIN_CELLS = 6  # blocks on the page unless told: as many as there are text features


@dataclass(frozen=True)
class ExplainConfig:
    """What ``charlstm explain`` reads, which cells it shows and where the page goes."""

    text: str  # path of the text to read
    out: str  # path of the HTML page
    chars: int = 10_000  # the first N characters of the text
    cells: int | None = None  # blocks (None: EXPLAIN_CELLS): each feature's best cell, then the most varied
    cell_ids: tuple[int, ...] | None = None  # these cells instead (a comma-separated string is accepted)
    value: str | None = None  # "cell" (tanh of the cell state) or "hidden"; None: cell, hidden for a GRU
    encoding: str = "utf-8"

    def __post_init__(self) -> None:
        _positive_int(self, "chars")
        if self.cells is not None:
            _positive_int(self, "cells")
            if self.cell_ids is not None:
                raise UserError("--cells and --cell-ids cannot be used together, expected one of them")
        if self.value is not None:
            _choice(self, "value", EXPLAIN_VALUES)
        if self.cell_ids is not None:
            object.__setattr__(self, "cell_ids", _cell_ids(self.cell_ids))

    @property
    def blocks(self) -> int:
        """How many cells to show when the cells are found automatically."""
        return self.cells or EXPLAIN_CELLS


def _cell_ids(given: object) -> tuple[int, ...]:
    """Cell numbers as a tuple without repeats, from a sequence or the command line's "3,17,200"."""
    parts = given.split(",") if isinstance(given, str) else given
    try:
        ids = tuple(int(p) if isinstance(given, str) else p for p in parts)  # type: ignore[attr-defined]
    except (ValueError, TypeError):  # not a number, or not a sequence
        ids = ()
    if not ids or any(isinstance(i, bool) or not isinstance(i, int) or i < 0 for i in ids):
        raise _fail("cell_ids", given, "cell numbers >= 0, separated by commas (e.g. 3,17,200)")
    return tuple(dict.fromkeys(ids))
