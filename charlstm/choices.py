"""The closed sets: each option's choices, and the ways a training session ends, as enums.

A member is a ``str`` (``Cell.GRU == "gru"``), so configs keep plain strings (checkpoints hold
only plain types), JSON writes the value, and a comparison with a saved string holds. Each
set is declared here once: the configs validate against it and the help lists it.
"""

from __future__ import annotations

from enum import Enum


class Choice(str, Enum):
    """A member of a closed set of strings; formats as its value on every Python version."""

    def __str__(self) -> str:
        return self.value

    def __format__(self, spec: str) -> str:
        return format(self.value, spec)

    @classmethod
    def values(cls) -> tuple[str, ...]:
        return tuple(member.value for member in cls)


class Cell(Choice):
    LSTM = "lstm"
    GRU = "gru"
    PEEPHOLE = "peephole"  # an LSTM whose gates read the cell state


class Schedule(Choice):
    COSINE = "cosine"
    STEP = "step"
    PLATEAU = "plateau"
    CONSTANT = "constant"


class DeviceName(Choice):
    AUTO = "auto"
    CPU = "cpu"
    CUDA = "cuda"
    MPS = "mps"


class Precision(Choice):
    AUTO = "auto"  # measured (training) or as the model trained (sampling)
    FP32 = "fp32"
    BF16 = "bf16"


STEP_PRECISIONS = (Precision.FP32, Precision.BF16)  # what a precision resolves to


class Unknown(Choice):
    """What to do with characters a model without byte tokens cannot read."""

    ERROR = "error"
    SKIP = "skip"


class Split(Choice):
    ALL = "all"
    TRAIN = "train"
    VAL = "val"


class ExportFormat(Choice):
    """What ``charlstm export`` writes, named by the target's suffix."""

    SAFETENSORS = "safetensors"  # the weights, with configs and vocabulary as metadata
    ONNX = "onnx"  # a stateful step graph for onnxruntime and other runtimes
    HTML = "html"  # one page that generates offline in a browser


class RatesFrom(Choice):
    """Where the rates of a dynamic evaluation came from."""

    CHECKPOINT = "checkpoint"  # fitted by an earlier eval --dynamic and kept in the file
    FITTED = "fitted"  # fitted now, and kept in the checkpoint's file
    FITTED_NOT_KEPT = "fitted_not_kept"  # fitted now; the file could not take them (export, older format, changed)


class ByteFallback(Choice):
    AUTO = "auto"  # byte tokens when some character has no token of its own
    ON = "on"


class PresetName(Choice):
    AUTO = "auto"  # the preset the budget calls for (training/presets.py)
    MICRO = "micro"
    TINY = "tiny"
    SMALL = "small"
    MEDIUM = "medium"
    STACKED = "stacked"
    LARGE = "large"


class ExplainValue(Choice):
    CELL = "cell"  # tanh of the cell state
    HIDDEN = "hidden"


class ChosenBy(Choice):
    """Who picked a new run's preset."""

    BUDGET = "budget"  # --preset auto: the one the budget calls for
    PRESET = "preset"  # --preset NAME
    USER = "user"  # nothing was left to fill: the user set every sized option


class StopReason(Choice):
    """Why a training session ended; ``ERROR`` only in the metrics log's end record."""

    MAX_STEPS = "max_steps"
    EPOCHS = "epochs"
    MAX_TIME = "max_time"
    SIGNAL = "signal"
    NAN = "nan"
    ERROR = "error"

    @property
    def finished(self) -> bool:
        """Whether the budget was spent: the ways a run finishes."""
        return self in (StopReason.MAX_STEPS, StopReason.EPOCHS, StopReason.MAX_TIME)


class FinishReason(Choice):
    """Why a served completion ended (OpenAI's ``finish_reason``)."""

    LENGTH = "length"  # max_tokens generated
    STOP = "stop"  # a stop sequence appeared (it is not part of the text)
