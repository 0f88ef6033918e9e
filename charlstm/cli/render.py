"""How the command line draws: progress bars, a spinner for slow first work, the eval, info,
explain and runs tables, and samples on stdout (the training view is ``train_view.py``). Part of
the CLI: only the command modules beside it import it.
"""

from __future__ import annotations

import json
import math
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

from rich.cells import cell_len
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn
from rich.table import Table

from charlstm.choices import ExportFormat, RatesFrom
from charlstm.store.checkpoint import Lineage
from charlstm.training import words
from charlstm.training.presets import Sizing

if TYPE_CHECKING:
    from charlstm.export import Exported


class Waiting:
    """A spinner with a message, shown only once ``start`` is called (when the work turns out
    slow), on a terminal; elsewhere the message as one line."""

    def __init__(self, console: Console, message: str) -> None:
        self.console, self.message = console, message
        self.status: Any = None

    def __enter__(self) -> Waiting:
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    def stop(self) -> None:
        if self.status is not None:
            self.status.stop()
            self.status = None

    def start(self) -> None:
        if not self.console.is_terminal:
            self.console.print(self.message, soft_wrap=True, markup=False, highlight=False)
            return
        self.status = self.console.status(self.message)
        self.status.start()


class ProgressBar:
    """A bar on stderr for a long task that reports (done, total); shown only once it starts."""

    def __init__(self, console: Console, description: str) -> None:
        self.bar = Progress(
            TextColumn(description), BarColumn(), TextColumn("{task.percentage:>3.0f}%"), console=console
        )
        self.task: Any = None
        self._lock = threading.Lock()

    def __enter__(self) -> ProgressBar:
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar.live.is_started:
            self.bar.stop()

    def update(self, done: int, total: int) -> None:
        """From any thread; at ``total`` the bar stays as it is and the console is free for another."""
        with self._lock:
            if self.task is None:
                self.bar.start()
                self.task = self.bar.add_task("", total=total)
            self.bar.update(self.task, completed=max(done, self.bar.tasks[0].completed))
            if done >= total and self.bar.live.is_started:
                self.bar.stop()


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


def write_scored(out: IO[str], samples: Any) -> None:
    """``charlstm sample --logprobs N``: a JSON line per token drawn, sample by sample within each
    piece (``sample``, ``token``, ``logprob``, ``top_logprobs``, ``text_offset`` past the prompt)."""
    for _ in samples.pieces:
        for i, tokens in enumerate(samples.scores):
            for record in tokens:
                out.write(json.dumps({"sample": i, **record}, ensure_ascii=False) + "\n")
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
    if result.dynamic is not None:
        d = result.dynamic
        pieces = "one stream" if d.streams == 1 else f"{d.streams} streams"
        table.add_row(f"read in {pieces}", f"{d.static_loss:.4f} nats/char in {d.static_seconds:.1f}s (static)")
        gain = f"{d.dynamic_loss - d.static_loss:+.4f} against static"
        table.add_row("dynamic evaluation", f"{d.dynamic_loss:.4f} nats/char in {d.dynamic_seconds:.1f}s ({gain})")
        fitted = {
            RatesFrom.CHECKPOINT: "the checkpoint's",
            RatesFrom.FITTED: "fitted now on the training split, kept in the checkpoint",
            RatesFrom.FITTED_NOT_KEPT: "fitted now on the training split; this file cannot keep them",
        }[d.rates_from]
        table.add_row("its rates", f"{_rates(d.rates.to_dict())} ({fitted})")
    return table


INFO_ROWS = (
    "step",
    "epoch",
    "elapsed",
    "val_loss",
    "last_val_loss",
    "run_last_val_loss",
    "averaged_val_loss",
    "best_averaged",
    "params",
    "vocab_size",
    "own_tokens",
    "own_coverage",
    "byte_fallback",
    "precision",
    "format_version",
    "resume",
)
COUNTS = ("step", "params", "vocab_size", "own_tokens")  # shown with thousands separators
LOSSES = ("val_loss", "last_val_loss", "averaged_val_loss")
# What each loss figure is: best.pt's last evaluation is not the run's last (issue 29, point 11).
LABELS = {
    "val_loss": "best val loss",
    "last_val_loss": "last eval's val loss",  # of the trained weights, before this file was written
    "run_last_val_loss": "run's last val loss",
    "averaged_val_loss": "averaged val loss",
}
AVERAGED = ("averaged_val_loss", "best_averaged")  # rows of a run with --average


def info_table(report: dict[str, Any]) -> Table:
    """``charlstm info``: what a checkpoint holds, one row per item, in units a person reads
    (``--json`` keeps the raw numbers)."""
    table = Table(title=f"charlstm info: {report['path']}", show_header=False)
    for key in INFO_ROWS:
        if key in AVERAGED and report.get("averaged_val_loss") is None:
            continue  # a run without --average (or before its average was evaluated)
        if key == "run_last_val_loss":
            if report.get(key) is not None:  # known from the run's metrics.jsonl
                step = report.get("run_last_eval_step")
                table.add_row(LABELS[key], words.nats(report[key]) + (f" at step {step:,}" if step is not None else ""))
            continue
        table.add_row(LABELS.get(key, key), _info_value(key, report.get(key)))
    sizing = words.sizing(Sizing.from_dict(report["sizing"])) if report.get("sizing") else ""
    if sizing:
        table.add_row("sizing", sizing)
    if report.get("lineage"):
        table.add_row("started from", words.lineage(Lineage.from_dict(report["lineage"])))
    if report.get("dynamic"):  # fitted by the first eval --dynamic
        d = report["dynamic"]
        there = f"{d['static_loss']:.4f} -> {d['dynamic_loss']:.4f}"
        fitted = f"fitted on {d['fitted_chars']:,} tokens of the training split: {there}"
        table.add_row("dynamic evaluation", f"{_rates(d)} ({fitted})")
    table.add_row("vocabulary", repr(report["vocab"]))
    for section, values in report["config"].items():
        table.add_row(f"{section} config", ", ".join(f"{k}={v}" for k, v in values.items()))
    return table


def _rates(rates: dict[str, Any]) -> str:
    """Dynamic evaluation's rates, as eval and info write them."""
    return f"lr {rates['lr']:g}, decay {rates['decay']:g}, segments of {rates['segment']}"


def _info_value(key: str, value: Any) -> str:
    if value is None:
        return "-"
    if key in COUNTS:
        return f"{value:,}"
    if key == "epoch":
        return f"{value:.2f}"
    if key == "elapsed":
        return words.seconds(value)
    if key in LOSSES:
        return words.nats(value)
    if key == "own_coverage":
        return f"{value:.2%} of the text"
    return _plain(value)


def _plain(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4f}"
    return "-" if value is None else str(value)


RUNS_CAPTION = (
    "best, last: validation loss in nats/char. state: finished (budget spent), a signal's name (stopped by it), "
    "error, running (changed in the last 5 minutes), unknown (no end record: killed?)"
)
RUN_COLUMNS = ("run", "corpus", "base", "model", "params", "steps", "time", "best", "last", "state", "changed")


# The columns a narrow terminal leaves out first, so that a run's name is never cut (issue 29, 13).
RUNS_DROPPED_FIRST = ("changed", "base", "corpus", "params", "time", "steps", "last", "model", "state", "best")
MIN_CORPUS = 6  # the corpus column's least width (its names end in an ellipsis below their own)


def runs_table(runs: list[Any], folder: str, now: float, width: int = 80) -> Table:
    """``charlstm runs``: one row per run directory, within ``width`` columns. A run's name is what
    the other commands take, so it is never wrapped nor cut: in a narrow terminal the corpus
    names shrink to an ellipsis, then the least needed columns are left out."""
    rows = [_run_row(run, now) for run in runs]
    columns = [c for c in RUN_COLUMNS if c != "base" or any(run.lineage for run in runs)]  # fine-tuned runs only

    def needed(shown: list[str]) -> int:  # the least width: each column and the one space after it
        widths = {c: max([cell_len(c)] + [cell_len(row[c]) for row in rows]) for c in shown}
        if "corpus" in widths:
            widths["corpus"] = min(widths["corpus"], MIN_CORPUS)
        return sum(widths.values()) + len(shown)

    for column in RUNS_DROPPED_FIRST:
        if needed(columns) <= width:
            break
        if column in columns:
            columns.remove(column)
    table = Table(title=f"charlstm runs: {folder}", caption=RUNS_CAPTION, caption_justify="left", box=None)
    table.padding = (0, 1, 0, 0)
    for column in columns:
        left = column in ("run", "corpus", "base", "model", "state")
        table.add_column(  # only the corpus column gives way (rich narrows the columns that may wrap)
            column,
            justify="left" if left else "right",
            no_wrap=column != "corpus",
            overflow="ellipsis" if column == "corpus" else "fold",  # a name folds only past the terminal's width
            min_width=MIN_CORPUS if column == "corpus" else None,
        )
    for row in rows:
        table.add_row(*(row[c] for c in columns))
    return table


def _run_row(run: Any, now: float) -> dict[str, str]:
    """One run's cells, by column."""
    return {
        "run": run.name,
        "corpus": Path(run.corpus).name if run.corpus else "-",
        "base": words.base_name(run.lineage),
        "model": f"{run.cell} {run.layers}x{run.hidden}" if run.layers else "-",
        "params": _count(run.params),
        "steps": f"{run.steps:,}",
        "time": words.seconds(run.elapsed),
        "best": words.loss(_or_nan(run.best_val_loss)),
        "last": words.loss(_or_nan(run.last_val_loss)),
        "state": (run.detail or "signal") if run.state == "signal" else run.state,
        "changed": _ago(now - run.last_change),
    }


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


def exported(done: Exported) -> str:
    """The line ``charlstm export`` ends with: what it wrote, its size, and what reads it."""
    size = f"{done.size / 2**20:.1f} MiB, {done.size:,} bytes"
    if done.format == ExportFormat.ONNX:
        check = f"onnxruntime matches torch over {done.steps_checked} steps, largest logit difference"
        return f"wrote {done.path} ({size}, opset {done.opset}); {check} {done.max_logit_diff:.1e}"
    if done.format == ExportFormat.HTML:
        where = "open it in a browser: it needs no server or network"
        return f"wrote {done.path} ({size}, {done.precision} weights); {where}"
    return f"wrote {done.path} ({size}); sample, eval and info accept it"
