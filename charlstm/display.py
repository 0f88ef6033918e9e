"""The command line's live training display: a rich progress bar, evaluation lines and a
summary table, drawn from training events on stderr. Part of the CLI: only ``cli.py`` imports it.
"""

from __future__ import annotations

import math
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from charlstm import events


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
        self.download_task: Any = None
        self.val = math.nan

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

    def download(self, done: int, total: int | None) -> None:
        self._show()
        if self.download_task is None:
            self.download_task = self.bar.add_task("download", total=total, status="corpus")
        self.bar.update(self.download_task, completed=done)

    def on_event(self, event: events.Event) -> None:
        if isinstance(event, events.Started):
            self._started(event)
        elif isinstance(event, events.Progress):
            left = f"{_seconds(event.remaining)} left" if event.remaining is not None else ""
            status = (
                f"step {event.step}  loss {event.loss:.3f}  val {_loss(self.val)}  lr {event.lr:.2e}  "
                f"{event.chars_per_sec / 1000:.1f}k chars/s  {left}"
            )
            self.bar.update(self.task, completed=event.fraction, status=status)
        elif isinstance(event, events.Evaluated):
            self.val = event.val_loss
            mark = " [green](best)[/green]" if event.is_best else ""
            self.bar.console.print(f"step {event.step}: val loss {event.val_loss:.4f}{mark}")
            if event.sample:
                self.bar.console.print(event.sample, style="dim", markup=False)
        elif isinstance(event, events.Finished):
            self.close()
            self._summary(event.result)

    def _started(self, event: events.Started) -> None:
        self._show()
        self.task = self.bar.add_task("train", total=1.0, status="starting")
        resumed = f", resumed at step {event.resumed_step}" if event.resumed_step else ""
        self.bar.console.print(
            f"[bold]charlstm[/bold] {event.params:,} parameters on {event.device} ({event.precision}), "
            f"{event.train_chars:,} training / {event.val_chars:,} validation characters, "
            f"run directory {event.run_dir}{resumed}"
        )

    def _summary(self, result: events.TrainResult) -> None:
        best = result.best_val_loss
        table = Table(title="charlstm train", show_header=False)
        for key, value in (
            ("run directory", str(result.run_dir)),
            ("steps", f"{result.step:,}"),
            ("epochs", f"{result.epoch:.2f}"),
            ("time", _seconds(result.elapsed)),
            ("stopped by", result.stopped_by),
            ("best val loss", f"{_loss(best)} nats/char ({_loss(best / math.log(2))} bpc)"),
            ("last val loss", _loss(result.last_val_loss)),
            ("train loss", f"{result.train_loss:.4f}"),
            ("speed", f"{result.chars_per_sec:,.0f} chars/s (this session, evaluations included)"),
        ):
            table.add_row(key, value)
        self.console.print(table)


def _loss(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def _seconds(s: float | None) -> str:
    if s is None or not math.isfinite(s):
        return "?"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"
