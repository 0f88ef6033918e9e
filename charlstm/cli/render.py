"""How the command line draws: the live training view (a rich progress bar, evaluation lines
and a summary table, from training events on stderr), progress bars, the eval and info tables,
and samples on stdout. Part of the CLI: only the command modules beside it import it.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table
from rich.text import Text

from charlstm.choices import StopReason
from charlstm.training import events, words
from charlstm.training.presets import Sizing


class TrainView:
    """Turns training events into a live progress bar, evaluation lines and a summary table."""

    def __init__(self, console: Console) -> None:
        self.console = console
        self.bar = Progress(
            TextColumn("[bold]{task.description}"),
            BarColumn(),
            TextColumn("{task.percentage:>3.0f}%"),
            TimeElapsedColumn(),
            TextColumn("{task.fields[status]}"),
            console=console,
            transient=False,
        )
        self.task: Any = None
        self.reading_tasks: dict[str, Any] = {}
        self.figures: dict[str, str | int | None] = {}  # what the bar's status line shows, newest of each

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
        elif isinstance(event, events.Progress):
            left = f"{words.seconds(event.remaining)} left" if event.remaining is not None else ""
            speed = f"{event.chars_per_sec / 1000:.1f}k chars/s"
            self._update(event.fraction, step=event.step, loss=f"{event.loss:.3f}", lr=f"{event.lr:.2e}", speed=speed)
            self.figures["left"] = left
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
            self._summary(result)

    def _update(self, fraction: float | None, **figures: str | int | None) -> None:
        """The bar's status line: the newest of each figure, so that its last state shows the final
        evaluation (an evaluation, or the end, arrives after the log line it follows)."""
        self.figures.update(figures)
        f = self.figures
        parts = [f"step {f['step']}", f"loss {f.get('loss') or '-'}", f"val {f.get('val') or '-'}"]
        parts += [f"lr {f['lr']}" if f.get("lr") else "", f.get("speed") or "", f.get("left") or ""]
        status = "  ".join(part for part in parts if part)
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

    def _summary(self, result: events.TrainResult) -> None:
        """The same table however the run ended; a stopped run's resume command comes just before it,
        as plain text that no width cuts or folds, so that it can be copied whole."""
        if result.stopped_by is StopReason.SIGNAL:
            self.console.print(
                words.resume_hint(result),
                soft_wrap=True,
                markup=False,
                highlight=False,
            )
        best = result.best_val_loss
        table = Table(title="charlstm train", show_header=False)
        for key, value in (
            ("run directory", str(result.run_dir)),
            ("steps", f"{result.step:,}"),
            ("epochs", f"{result.epoch:.2f}"),
            ("time", words.seconds(result.elapsed)),
            ("stopped by", words.stopped_by(result)),
            ("best val loss", f"{words.loss(best)} nats/char ({words.loss(best / math.log(2))} bpc)"),
            ("last val loss", words.loss(result.last_val_loss)),
            ("train loss", words.loss(result.train_loss)),
            ("speed", f"{result.chars_per_sec:,.0f} chars/s (this session, evaluations included)"),
        ):
            table.add_row(key, value)
        self.console.print(table)


class ProgressBar:
    """A bar on stderr for a long task that reports (done, total); shown only once it starts."""

    def __init__(self, console: Console, description: str) -> None:
        self.bar = Progress(
            TextColumn(description), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), console=console
        )
        self.task: Any = None

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar.live.is_started:
            self.bar.stop()

    def update(self, done: int, total: int) -> None:
        if self.task is None:
            self.bar.start()
            self.task = self.bar.add_task("", total=total)
        self.bar.update(self.task, completed=done)


def write_samples(out: IO[str], prompt: str, pieces: Iterator[list[str]], count: int) -> None:
    """Samples are drawn side by side: the first streams to ``out`` as it grows, the others follow it."""
    tty = out.isatty()
    rest: list[list[str]] = [[] for _ in range(count - 1)]
    out.write(prompt)
    for piece, *others in pieces:
        out.write(piece)
        if tty or "\n" in piece:
            out.flush()
        for kept, more in zip(rest, others, strict=True):
            kept.append(more)
    out.write("\n")
    for kept in rest:
        out.write("\n" + "-" * 40 + "\n" + prompt + "".join(kept) + "\n")
    out.flush()


def explain_table(report: Any) -> Table:
    """``charlstm explain``'s findings: for each text feature, the cell that follows it best."""
    table = Table(title=f"charlstm explain: {report.value} values, {report.chars:,} characters")
    for column in ("feature", "cell", "r"):
        table.add_column(column, justify="right" if column == "r" else "left")
    for found in report.found:
        table.add_row(found.feature, str(found.cell), f"{found.r:+.2f}")
    for feature in report.absent:
        table.add_row(feature, "[dim]not in this text[/dim]", "")
    table.caption = f"cells on the page: {', '.join(map(str, report.cells))}"
    return table


def eval_table(report: Any) -> Table:
    """``charlstm eval``'s result: loss, bits per character, perplexity, characters measured."""
    result = report.result
    table = Table(title=f"charlstm eval: {report.corpus} ({report.split})", show_header=False)
    table.add_row("loss", f"{result.loss:.4f} nats/char")
    table.add_row("bits per char", f"{result.bpc:.4f}")
    table.add_row("perplexity", f"{result.perplexity:.3f}")
    table.add_row("characters", f"{result.chars:,}")
    return table


INFO_ROWS = (
    "step",
    "epoch",
    "elapsed",
    "val_loss",
    "last_val_loss",
    "params",
    "vocab_size",
    "own_tokens",
    "own_coverage",
    "byte_fallback",
    "precision",
    "format_version",
    "resume",
)


def info_table(report: dict[str, Any]) -> Table:
    """``charlstm info``: what a checkpoint holds, one row per item."""
    table = Table(title=f"charlstm info: {report['path']}", show_header=False)
    for key in INFO_ROWS:
        table.add_row(key, _plain(report.get(key)))
    sizing = words.sizing(Sizing.from_dict(report["sizing"])) if report.get("sizing") else ""
    if sizing:
        table.add_row("sizing", sizing)
    table.add_row("vocabulary", repr(report["vocab"]))
    for section, values in report["config"].items():
        table.add_row(f"{section} config", ", ".join(f"{k}={v}" for k, v in values.items()))
    return table


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


RUNS_CAPTION = (
    "best, last: validation loss in nats/char. state: finished (budget spent), a signal's name (stopped by it), "
    "error, running (changed in the last 5 minutes), unknown (no end record: killed?)"
)
RUN_COLUMNS = ("run", "corpus", "model", "params", "steps", "time", "best", "last", "state", "changed")


def runs_table(runs: list[Any], folder: str, now: float) -> Table:
    """``charlstm runs``: one row per run directory; only the names wrap in a narrow terminal."""
    table = Table(title=f"charlstm runs: {folder}", caption=RUNS_CAPTION, caption_justify="left", box=None)
    table.padding = (0, 1, 0, 0)  # one space between columns, none at the edges: the table fits 80 columns
    for column in RUN_COLUMNS:
        left, wraps = column in ("run", "corpus", "model", "state"), column in ("run", "corpus")
        overflow = "fold" if column == "run" else "ellipsis"  # a run's name is shown whole, on several lines if need be
        table.add_column(
            column,
            justify="left" if left else "right",
            no_wrap=not wraps,
            min_width=_run_width(runs) if column == "run" else 6 if wraps else None,
            overflow=overflow,
        )
    for run in runs:
        table.add_row(
            run.name,
            Path(run.corpus).name if run.corpus else "-",
            f"{run.cell} {run.layers}x{run.hidden}" if run.layers else "-",
            _count(run.params),
            f"{run.steps:,}",
            words.seconds(run.elapsed),
            words.loss(_or_nan(run.best_val_loss)),
            words.loss(_or_nan(run.last_val_loss)),
            (run.detail or "signal") if run.state == "signal" else run.state,
            _ago(now - run.last_change),
        )
    return table


def _or_nan(value: float | None) -> float:
    return math.nan if value is None else value


def _count(n: int | None) -> str:
    """A parameter count in three figures: 41.7K, 1.20M."""
    if n is None:
        return "-"
    for scale, suffix in ((1e9, "G"), (1e6, "M"), (1e3, "K")):
        if n >= scale:
            return f"{n / scale:.3g}{suffix}"
    return str(n)


def _ago(seconds: float) -> str:
    """How long ago, in the largest whole unit: 40s, 12m, 3h, 5d."""
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f"{int(seconds // size)}{unit} ago"
    return f"{max(int(seconds), 0)}s ago"


def _run_width(runs: list[Any]) -> int:
    """The run column's least width: its longest name, up to what 80 columns leave beside the rest."""
    return min(max((len(run.name) for run in runs), default=6), 10)
