"""A run's TensorBoard log (``--tensorboard``): the scalars of ``metrics.jsonl`` and the preview
samples as text, written into the run directory by torch's ``SummaryWriter``, which needs the
``tensorboard`` package (``pip install 'charlstm[tensorboard]'``); imported only when asked for.

The log is fed the very records that ``metrics.jsonl`` gets, so the two cannot disagree. Each
session writes a file of its own, which starts with a purge mark at the step after the session's
first (``SummaryWriter``'s ``purge_step``): TensorBoard hides what an interrupted session logged
after the checkpoint a resumed one starts from, as resume drops those lines of ``metrics.jsonl``,
and the steps follow on without repeats. A log turned on by a resume starts with the run's
records so far (the previews before it were never kept).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any

from charlstm.errors import UserError

INSTALL = "pip install 'charlstm[tensorboard]'"
EVENTS = "events.out.tfevents.*"  # the names SummaryWriter gives its files

# The scalars of each record type of metrics.jsonl: field -> tag. A tag's prefix is its section
# in TensorBoard, so training and validation curves sit apart.
SCALARS: dict[str, dict[str, str]] = {
    "train": {"loss": "train/loss", "lr": "train/lr", "chars_per_sec": "train/chars_per_sec"},
    "eval": {"val_loss": "val/loss", "val_bpc": "val/bpc", "averaged_val_loss": "val/averaged_loss"},
}
SAMPLE = "sample"  # the previews' tag (SummaryWriter adds "/text_summary")


def _summary_writer() -> type:
    """torch's SummaryWriter, or one line saying how to install what it needs."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:  # torch raises it, with its own words, when tensorboard is missing
        raise UserError(f"--tensorboard needs the tensorboard package, which is not installed: {INSTALL}") from None
    return SummaryWriter


def require() -> None:
    """Refuse, before a run writes anything, a ``--tensorboard`` that could not be honoured."""
    _summary_writer()


def as_markdown(sample: str) -> str:
    """A preview as TensorBoard's text view shows it verbatim: a Markdown code block (indented
    lines), since as plain Markdown its line breaks would fold and ``*`` or ``#`` would format."""
    return "\n".join("    " + line for line in sample.split("\n"))


class EventLog:
    """One session's TensorBoard file in a run directory."""

    def __init__(self, run_dir: Path, step: int, earlier: Iterable[dict[str, Any]] = ()) -> None:
        """Open the session's file for a run at ``step`` (0 for a new run). A resumed session hides
        the steps after ``step`` of the files before it; where there are none, it writes the
        ``earlier`` records (the run's metrics so far) first."""
        first = not any(Path(run_dir).glob(EVENTS))
        # A new run's file gets the mark too, although it hides nothing: TensorBoard's Python
        # loader (--load_fast=false) takes a run's first mark as its start, only later ones as restarts.
        self._writer = _summary_writer()(str(run_dir), purge_step=step + 1)
        for record in earlier if first else ():
            self.record(record)

    def record(self, record: dict[str, Any]) -> None:
        """The scalars of one record of ``metrics.jsonl``, at its step; other records have none."""
        for field, tag in SCALARS.get(record.get("type", ""), {}).items():
            if record.get(field) is not None:
                self._writer.add_scalar(tag, record[field], record["step"])

    def sample(self, step: int, text: str) -> None:
        """An evaluation's preview; none (no text) is left out."""
        if text:
            self._writer.add_text(SAMPLE, as_markdown(text), step)

    def flush(self) -> None:
        """Write what is queued: called before a checkpoint, so the log holds every step it does."""
        self._writer.flush()

    def close(self) -> None:
        self._writer.close()
