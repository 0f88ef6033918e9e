"""What training reports while it runs, and what it returns: plain data, so that a display
(the CLI's rich view, the API's tqdm bar, a test) needs nothing heavier to read them."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path


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
    vocab: str = ""  # e.g. "65 characters", or own tokens, their share of the text and byte tokens
    skipped_files: list[str] = field(default_factory=list)  # left out of the corpus (--skip-bad-files)
    processes: int = 1  # training this model together (torchrun)
    note: str = ""  # anything else to say as training starts
    sizing: str = ""  # the preset chosen for the budget, in words (a new run only)


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
    stopped_by: str  # "max_steps", "epochs", "max_time", "signal", "nan"
    resume_command: str  # the command line that continues this run
    signal: int | None = None
    main_process: bool = True  # whether this process is the one that prints (the only one, without torchrun)

    @property
    def failure(self) -> str | None:
        """Why the run failed, as one line for the user; None when it did not."""
        if self.stopped_by != "nan":
            return None
        return (
            f"the training loss became NaN or infinite by step {self.step}; best.pt and the last good "
            f"last.pt are kept, try a lower --lr or --grad-clip"
        )


@dataclass
class Finished:
    result: TrainResult


Event = Started | Progress | Evaluated | Finished
EventFn = Callable[[Event], None]
