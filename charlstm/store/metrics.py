"""``metrics.jsonl``, a run's log: one JSON object a line, appended as the run goes, read by
``charlstm plot`` and ``charlstm runs``. Kept free of torch, so that reading it is quick.

Records, by ``type``:
    train   step, epoch, loss (nats/char since the last line), lr, chars_per_sec, elapsed
    eval    step, epoch, val_loss, val_bpc, best, elapsed, eval_chars, eval_seconds
    end     step, elapsed, stopped_by (a StopReason: TrainResult's, or "error"), signal (its name, or
            None), error (a line saying what went wrong, or None): how a session ended

A session that ends writes one ``end`` record last; a resumed run appends after it, so the run
has ended only when its last line is one. A process killed outright (SIGKILL) or a machine that
went down leaves none.
"""

from __future__ import annotations

import json
import signal
from collections.abc import Callable
from pathlib import Path
from typing import Any, TextIO

from charlstm.errors import UserError

METRICS = "metrics.jsonl"


def append(run_dir: Path, record: dict[str, Any]) -> None:
    """Add one line to the run's log."""
    with open(Path(run_dir) / METRICS, "a", encoding="utf-8") as f:
        f.write(json.dumps(record) + "\n")


def lines_of(records: list[dict[str, Any]]) -> Callable[[TextIO], None]:
    """A writer of ``records`` as the log's text, for ``files.atomic_write``."""
    text = "".join(json.dumps(r) + "\n" for r in records)
    return lambda f: f.write(text)


def read(run_dir: str | Path) -> list[dict[str, Any]]:
    """Every record of a run's log, in order. A line that does not parse (the torn last line of
    a process killed mid-write) is left out; a folder without a log is an error."""
    path = Path(run_dir).expanduser() / METRICS
    if not path.is_file():
        what = "does not exist" if not path.parent.exists() else f"holds no {METRICS}"
        raise UserError(f"run directory {str(path.parent)!r} {what}, expected a folder written by charlstm train")
    records = []
    with open(path, encoding="utf-8", errors="replace") as f:
        for line in f:
            try:
                record = json.loads(line)
            except ValueError:
                continue
            if isinstance(record, dict):
                records.append(record)
    return records


def last_eval(run_dir: str | Path) -> dict[str, Any] | None:
    """The run's last ``eval`` record, or None where the folder has no log or the log no evaluation."""
    if not (Path(run_dir).expanduser() / METRICS).is_file():
        return None
    evals = [r for r in read(run_dir) if r.get("type") == "eval" and isinstance(r.get("val_loss"), (int, float))]
    return evals[-1] if evals else None


def end_record(
    step: int, elapsed: float, stopped_by: str, signum: int | None = None, error: str | None = None
) -> dict[str, Any]:
    """The last record of a session: how it ended."""
    name = signal.Signals(signum).name if signum else None
    record = {"type": "end", "step": step, "elapsed": round(elapsed, 3), "stopped_by": stopped_by}
    return {**record, "signal": name, "error": error}


def ending(records: list[dict[str, Any]]) -> dict[str, Any] | None:
    """The end record that closes the log, or None while the run has not ended (or left none)."""
    return records[-1] if records and records[-1].get("type") == "end" else None
