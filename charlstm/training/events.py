"""What training reports while it runs, and what it returns: plain data, so that a display
(the CLI's rich view, the API's tqdm bar, a test) needs nothing heavier to read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from charlstm.choices import StopReason
from charlstm.training.presets import Sizing

NEAR_TEXT, FAR_TEXT = 0.4, 0.15  # Familiarity.better at or above which a text is near, at or below which far


@dataclass(frozen=True)
class Familiarity:
    """How well the base reads the new text before any step: its loss on some of the training
    split, where a token the base never wrote (a new character) counts as a guess."""

    loss: float  # nats per token
    guess: float  # a uniform guess's over the tokens read: the log of how many different ones

    @property
    def better(self) -> float:
        """The share of a guess's loss the base saves: about 0.7 on its own text, 0.1 on Python
        sources after Shakespeare, below 0 where it reads worse than a guess (1 where there is
        nothing to guess: a text of one character)."""
        return 1 - self.loss / self.guess if self.guess > 0 else 1.0

    @property
    def far(self) -> float:
        """0 for a text near the base's, 1 for a far one, linear between (docs/sweep.md)."""
        return min(max((NEAR_TEXT - self.better) / (NEAR_TEXT - FAR_TEXT), 0.0), 1.0)


@dataclass(frozen=True)
class VocabStats:
    """The vocabulary a run trains with."""

    own: int  # characters with a token of their own
    byte_tokens: int  # tokens for the UTF-8 bytes of every other character (0 without byte fallback)
    own_coverage: float  # share of the text's characters that have their own token


@dataclass(frozen=True)
class VocabMerge:
    """How a fine-tuning run's vocabulary came from its base's and the new corpus's."""

    kept: int  # the new text's characters that the base had a token for: their rows kept as they were
    unused: int  # the base's characters that the new text lacks: kept too, so the model still reads them
    added: int  # the new text's characters that the base had no token for: new rows
    added_share: float  # share of the new text's characters written with new rows
    added_bytes: int = 0  # byte tokens added (a base without them, a text that needs them)


@dataclass
class Started:
    run_dir: Path
    params: int
    device: str
    precision: str
    chars_per_step: int
    train_chars: int
    val_chars: int
    resumed_step: int
    vocab: VocabStats | None = None
    skipped_files: list[str] = field(default_factory=list)  # left out of the corpus (--skip-bad-files)
    processes: int = 1  # training this model together (torchrun)
    saved_processes: int | None = None  # resumed from a run saved by this other number of processes
    sizing: Sizing | None = None  # the preset chosen for the budget (a new run only)
    merge: VocabMerge | None = None  # a new run started from a base (--init-from)
    base: str | None = None  # that base's file


@dataclass
class Compiling:
    """The sampling kernels are being compiled (``done`` False), which happens once per
    installation and takes a while, or have been (``done`` True, after ``seconds``)."""

    done: bool = False
    seconds: float | None = None


@dataclass
class Progress:
    step: int
    epoch: float
    loss: float
    lr: float
    chars_per_sec: float
    elapsed: float
    fraction: float  # of the run's budget, 0..1
    remaining: float | None  # seconds, estimated


@dataclass
class Evaluated:
    step: int
    val_loss: float
    is_best: bool
    sample: str
    elapsed: float | None = None  # seconds the run had trained when it was evaluated
    averaged_loss: float | None = None  # the averaged weights' loss, when they were evaluated too
    best_averaged: bool = False  # the best so far is the averaged weights'


@dataclass
class TrainResult:
    run_dir: Path
    step: int
    epoch: float
    elapsed: float
    best_val_loss: float
    last_val_loss: float
    train_loss: float
    chars_per_sec: float
    stopped_by: StopReason
    resume_command: str  # the command line that continues this run
    signal: int | None = None
    main_process: bool = True  # whether this process is the one that prints (the only one, without torchrun)

    def __post_init__(self) -> None:
        self.stopped_by = StopReason(self.stopped_by)  # a plain string is taken as the reason it names

    @property
    def failure(self) -> str | None:
        """Why the run failed, as one line for the user; None when it did not."""
        if self.stopped_by is not StopReason.NAN:
            return None
        return (
            f"the training loss became NaN or infinite by step {self.step}; best.pt and the last good "
            f"last.pt are kept, try a lower --lr or --grad-clip"
        )


@dataclass
class Finished:
    result: TrainResult


Event = Started | Compiling | Progress | Evaluated | Finished
EventFn = Callable[[Event], None]
