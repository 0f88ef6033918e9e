"""A run's TensorBoard log (``--tensorboard``): the scalars of ``metrics.jsonl`` and the preview
samples as text, written into the run directory by torch's ``SummaryWriter``, which needs the
``tensorboard`` package (``pip install 'charlstm[tensorboard]'``); imported only when asked for.

The log is fed the very records that ``metrics.jsonl`` gets, so the two cannot disagree. Each
session writes a file of its own, which starts with a purge mark at the step after the session's
first (``SummaryWriter``'s ``purge_step``): TensorBoard hides what an interrupted session logged
after the checkpoint a resumed one starts from, as resume drops those lines of ``metrics.jsonl``,
and the steps follow on without repeats. A log turned on by a resume (or whose files are gone)
hides whatever files are there and starts with the run's records so far, so that a session
without the log leaves no gap (the previews before it are not in metrics.jsonl: they are left out).
A write that fails (disk full, folder gone) is one clear error, as a checkpoint's is.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from contextlib import contextmanager
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
    except ImportError as e:  # torch's own words when tensorboard is missing, too old or broken
        raise UserError(
            f"--tensorboard needs the tensorboard package, which could not be imported ({e}): {INSTALL}"
        ) from None
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

    def __init__(self, run_dir: Path, step: int, earlier: Iterable[dict[str, Any]] = (), kept: bool = True) -> None:
        """Open the session's file for a run at ``step`` (0 for a new run). ``kept``: whether the
        files already there hold the run's steps up to ``step`` (the session that saved the
        checkpoint logged). If so, this file hides only the steps after ``step``; if not (or there
        are none), it hides them all and writes the ``earlier`` records (the run's metrics) first."""
        self.run_dir = Path(run_dir)
        whole = not kept or not any(self.run_dir.glob(EVENTS))
        # A new run's file gets the mark too, although it hides nothing: TensorBoard's Python
        # loader (--load_fast=false) takes a run's first mark as its start, only later ones as restarts.
        with self._writing():
            self._writer = _summary_writer()(str(run_dir), purge_step=1 if whole else step + 1)
            for record in earlier if whole else ():
                self.record(record)

    @contextmanager
    def _writing(self) -> Iterator[None]:
        """A failed write (raised here or, from the writer's thread, at the next call) as one line."""
        try:
            yield
        except OSError as e:
            raise UserError(
                f"could not write the TensorBoard log in {self.run_dir} ({e.strerror or e}); free some space or"
                f" pass --out to another folder, then --resume"
            ) from None

    def record(self, record: dict[str, Any]) -> None:
        """The scalars of one record of ``metrics.jsonl``, at its step; other records have none."""
        for field, tag in SCALARS.get(record.get("type", ""), {}).items():
            if record.get(field) is not None:
                with self._writing():
                    self._writer.add_scalar(tag, record[field], record["step"])

    def sample(self, step: int, text: str) -> None:
        """An evaluation's preview, written at once (it comes after the checkpoint, which a resume
        does not redo); none (no text) is left out."""
        if text:
            with self._writing():
                self._writer.add_text(SAMPLE, as_markdown(text), step)
                self._writer.flush()

    def flush(self) -> None:
        """Write what is queued: called before a checkpoint, so the log holds every step it does."""
        with self._writing():
            self._writer.flush()

    def close(self) -> None:
        with self._writing():
            self._writer.close()
