"""The training view: training events drawn on stderr, live in a terminal (a progress bar whose
status line fits the terminal's width, evaluation lines, a summary table), or as plain lines when
stderr is a file (a cluster job, ``nohup``, torchrun's logs): one line per event, no control
characters, progress every ``--log-every`` steps or every 30 s, whichever is rarer."""

from __future__ import annotations

import math
import time
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, SpinnerColumn, TextColumn, TimeElapsedColumn
from rich.table import Column, Table
from rich.text import Text

from charlstm.choices import StopReason
from charlstm.training import events, words

# The status line's figures, in the order shown, and the order they are kept in as the width shrinks.
SHOWN = ("step", "loss", "val", "lr", "speed", "left")
KEPT_FIRST = ("step", "loss", "left", "val", "speed", "lr")
# Everything on the bar's line but its status: spinner, description (up to "download"), the
# percentage and the elapsed time, with a space between columns; the bar's own width comes on top.
FIXED_WIDTH = 1 + 1 + 8 + 1 + 1 + 4 + 1 + 7 + 1
PLAIN_EVERY = 30.0  # seconds between two progress lines in a log file, at the least


def train_view(console: Console) -> TrainView | PlainView:
    """The live view in a terminal, plain lines elsewhere."""
    return TrainView(console) if console.is_terminal else PlainView(console)


def bar_width(width: int) -> int:
    return 40 if width >= 160 else max(10, width // 4)


def fit_status(figures: dict[str, str], room: int) -> str:
    """The figures that fit in ``room`` columns, the most wanted first, shown in their order."""
    kept: list[str] = []
    for name in KEPT_FIRST:
        if name in figures and len(_join(figures, [*kept, name])) <= room:
            kept.append(name)
    return _join(figures, kept)


def _join(figures: dict[str, str], names: list[str]) -> str:
    return "  ".join(figures[n] for n in SHOWN if n in names)


def _figures(raw: dict[str, Any]) -> dict[str, str]:
    """The status line's figures in words, from the newest of each."""
    shown = {
        "step": f"step {raw['step']}",
        "loss": f"loss {raw.get('loss') or '-'}",
        "val": f"val {raw.get('val') or '-'}",
    }
    for name, text in (("lr", f"lr {raw.get('lr')}"), ("speed", raw.get("speed")), ("left", raw.get("left"))):
        if raw.get(name):
            shown[name] = text  # type: ignore[assignment]
    return shown


class TrainView:
    """Training events as a live progress bar, evaluation lines and a summary table."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            SpinnerColumn(finished_text=" "),
            TextColumn("[bold]{task.description}"),
            BarColumn(bar_width=bar_width(console.width)),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}", table_column=Column(no_wrap=True, overflow="crop")),
            console=console,
            transient=False,
        )
        self.task: Any = None
        self.reading_tasks: dict[str, Any] = {}
        self.figures: dict[str, Any] = {}  # what the bar's status line shows, newest of each

    def __enter__(self) -> TrainView:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Stop the live display (again is fine); stopping one never shown would print a blank line."""
        if self.bar.live.is_started:
            self.bar.stop()

    def _show(self) -> None:
        """Start the live display on first use, so a failure before it shows no empty bar."""
        if not self.bar.live.is_started:
            self.bar.start()

    def reading(self, what: str, done: int, total: int | None) -> None:
        """Progress of reading the corpus: ``what`` is "download" or "encode" (bytes done of total)."""
        self._show()
        if what not in self.reading_tasks:
            self.reading_tasks[what] = self.bar.add_task(what, total=total, status="corpus")
        self.bar.update(self.reading_tasks[what], completed=done)

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Started):
            self._started(event)
        elif isinstance(event, events.Compiling):
            self._compiling(event)
        elif isinstance(event, events.Progress):
            left = f"{words.seconds(event.remaining)} left" if event.remaining is not None else ""
            speed = f"{event.chars_per_sec / 1000:.1f}k chars/s"
            figures = dict(step=event.step, loss=f"{event.loss:.3f}", lr=f"{event.lr:.2e}", speed=speed, left=left)
            self._update(event.fraction, **figures)
        elif isinstance(event, events.Evaluated):
            self._update(None, step=event.step, val=words.loss(event.val_loss))
            line = Text(words.evaluated(event))
            line.highlight_words([words.BEST], "green")
            self.bar.console.print(line)
            if event.sample:
                self.bar.console.print(event.sample, style="dim", markup=False)
        elif isinstance(event, events.Finished):
            result = event.result
            done = 1.0 if result.stopped_by.finished else None  # a stopped run keeps the share it reached
            loss = f"{result.train_loss:.3f}" if math.isfinite(result.train_loss) else self.figures.get("loss")
            self._update(done, step=result.step, loss=loss, val=words.loss(result.last_val_loss), left="")
            self.close()
            summary(self.console, result)

    def _update(self, fraction: float | None, **figures: Any) -> None:
        """The bar's status line: the newest of each figure (so that its last state shows the final
        evaluation, which arrives after the log line it follows), as many as the width holds."""
        self.figures.update(figures)
        room = self.console.width - FIXED_WIDTH - bar_width(self.console.width)
        status = fit_status(_figures(self.figures), room)
        if self.task is not None:
            self.bar.update(self.task, status=status, **({"completed": fraction} if fraction is not None else {}))

    def _started(self, event: events.Started) -> None:
        self._show()
        self.task = self.bar.add_task("train", total=1.0, status="starting")
        line = Text(words.start(event))
        line.stylize("bold", 0, len("charlstm"))
        self.bar.console.print(line)
        for note in words.start_notes(event):
            self.bar.console.print(note, markup=False)

    def _compiling(self, event: events.Compiling) -> None:
        """The words above the bar, whatever its width; the bar spins meanwhile, and its clock
        starts again when training does."""
        self.bar.console.print(words.compiling(event), markup=False)
        if self.task is not None:
            self.bar.update(self.task, status="starting" if event.done else "compiling")
            if event.done:
                self.bar.reset(self.task)


class PlainView:
    """Training events as plain lines, for a log file: each event one line, progress at most
    every ``PLAIN_EVERY`` seconds (and only as often as ``--log-every`` steps report it)."""

    def __init__(self, console: Console, every: float = PLAIN_EVERY, clock: Any = time.monotonic) -> None:
        self.console, self.every, self.clock = console, every, clock
        self.last_progress: float | None = None
        self.last_reading: float | None = None

    def __enter__(self) -> PlainView:
        return self

    def __exit__(self, *exc: object) -> None:
        pass

    def close(self) -> None:
        pass

    def line(self, text: str) -> None:
        """One line, whatever its length: no wrapping, no markup, no control characters."""
        clean = "".join(c if c.isprintable() else " " for c in text)
        self.console.print(clean, soft_wrap=True, markup=False, highlight=False, emoji=False)

    def _due(self, last: float | None) -> bool:
        return last is None or self.clock() - last >= self.every

    def reading(self, what: str, done: int, total: int | None) -> None:
        if self._due(self.last_reading) or (total is not None and done >= total):
            self.last_reading = self.clock()
            share = f" ({done / total:.0%})" if total else ""
            self.line(f"reading the corpus: {what} {done:,} bytes{share}")

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Started):
            for text in (words.start(event), *words.start_notes(event)):
                self.line(text)
        elif isinstance(event, events.Compiling):
            self.line(words.compiling(event))
        elif isinstance(event, events.Progress) and self._due(self.last_progress):
            self.last_progress = self.clock()
            self.line(words.progress(event))
        elif isinstance(event, events.Evaluated):
            self.line(words.evaluated(event))
            if event.sample:
                self.line("sample: " + event.sample.replace("\n", " ↵ "))
        elif isinstance(event, events.Finished):
            summary(self.console, event.result)


def summary(console: Console, result: events.TrainResult) -> None:
    """The same table however the run ended; a stopped run's resume command comes just before it,
    as plain text that no width cuts or folds, so that it can be copied whole."""
    if result.stopped_by is StopReason.SIGNAL:
        console.print(words.resume_hint(result), soft_wrap=True, markup=False, highlight=False)
    table = Table(title="charlstm train", show_header=False)
    for key, value in (
        ("run directory", str(result.run_dir)),
        ("steps", f"{result.step:,}"),
        ("epochs", f"{result.epoch:.2f}"),
        ("time", words.seconds(result.elapsed)),
        ("stopped by", words.stopped_by(result)),
        ("best val loss", words.nats(result.best_val_loss)),
        ("last val loss", words.loss(result.last_val_loss)),
        ("train loss", words.loss(result.train_loss)),
        ("speed", f"{result.chars_per_sec:,.0f} chars/s (this session, evaluations included)"),
    ):
        table.add_row(key, value)
    console.print(table)
