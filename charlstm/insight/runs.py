"""The run directories under a folder, one summary each: ``charlstm runs``.

A summary comes from the run's log (``metrics.jsonl``: steps, time, losses, how it ended) and a
look at its ``last.pt`` (configs and tensor shapes, the tensors mapped but never read), so that
listing many runs of large models takes milliseconds each.
"""

from __future__ import annotations

import datetime
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

from charlstm.choices import StopReason
from charlstm.errors import UserError
from charlstm.store import metrics
from charlstm.store.checkpoint import BEST, LAST, Checkpoint, Lineage, load_checkpoint
from charlstm.store.metrics import METRICS

RECENT = 300.0  # seconds: a run without an end record whose files changed this recently is still running
SORTS = ("best", "time")
# state: how the run stands; "unknown" is a run that left no end record and has not changed for a while
# (killed with SIGKILL, a machine that went down, or a run written before end records existed)
STATES = ("finished", "signal", "error", "running", "unknown")


@dataclass
class RunSummary:
    """One run directory, as ``charlstm runs`` shows it (None where its files do not say)."""

    name: str  # its path under the folder listed
    path: str
    corpus: str | None
    cell: str | None
    layers: int | None
    hidden: int | None
    params: int | None
    steps: int
    elapsed: float  # seconds trained, all sessions
    best_val_loss: float | None
    last_val_loss: float | None
    state: str  # one of STATES
    stopped_by: str | None  # the end record's reason: max_steps, epochs, max_time, signal, nan, error
    detail: str | None  # the signal's name or the error's message
    last_change: float  # the newest modification time of its files, seconds since the epoch
    lineage: Lineage | None = None  # the base it started from (--init-from), and that base's

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready, the time of the last change in ISO 8601 with the local offset."""
        when = datetime.datetime.fromtimestamp(self.last_change).astimezone()
        return {**asdict(self), "last_change": when.isoformat(timespec="seconds")}


def list_runs(folder: str | Path = "checkpoints", sort: str = "best", now: float | None = None) -> list[RunSummary]:
    """Every run directory at or under ``folder``, sorted by ``best`` validation loss (lowest
    first, runs never evaluated last) or by ``time`` of the last change (newest first)."""
    if sort not in SORTS:
        raise UserError(f"--sort {sort!r} is not valid, expected one of {', '.join(SORTS)}")
    root = Path(folder).expanduser()
    now = datetime.datetime.now().timestamp() if now is None else now
    found = [read_run(d, _name(d, root), now) for d in find_runs(root)]
    if sort == "time":
        return sorted(found, key=lambda r: (-r.last_change, r.name))
    return sorted(found, key=lambda r: (r.best_val_loss is None, r.best_val_loss or 0.0, r.name))


def find_runs(folder: Path) -> list[Path]:
    """The folders at or under ``folder`` that hold a run's log or checkpoint, in path order."""
    if not folder.is_dir():
        what = "does not exist" if not folder.exists() else "is not a folder"
        raise UserError(
            f"{str(folder)!r} {what}, expected a folder of run directories (charlstm train writes them "
            f"under checkpoints/ unless given --out)"
        )
    return sorted({p.parent for name in (METRICS, LAST, BEST) for p in folder.rglob(name) if p.is_file()})


def _name(run_dir: Path, root: Path) -> str:
    relative = run_dir.relative_to(root).as_posix()
    return run_dir.resolve().name if relative == "." else relative


def read_run(run_dir: Path, name: str, now: float) -> RunSummary:
    """A summary of one run directory; ``now`` tells a run still being written from one that stopped."""
    records = metrics.read(run_dir) if (run_dir / METRICS).is_file() else []
    ckpt = _peek(run_dir)
    changed = max(p.stat().st_mtime for p in (run_dir / n for n in (METRICS, LAST, BEST)) if p.is_file())
    evals = [r["val_loss"] for r in records if r.get("type") == "eval" and "val_loss" in r]
    progress = ckpt.progress if ckpt else None
    state, stopped_by, detail = _state(records, changed, now)
    return RunSummary(
        name=name,
        path=str(run_dir),
        corpus=ckpt.train_config.corpus if ckpt else None,
        lineage=ckpt.lineage if ckpt else None,
        cell=getattr(ckpt.model_config, "cell", "lstm") if ckpt else None,
        layers=ckpt.model_config.layers if ckpt else None,
        hidden=ckpt.model_config.hidden if ckpt else None,
        params=sum(t.numel() for t in ckpt.model.values()) if ckpt else None,
        steps=int(_latest(records, "step", progress.step if progress else 0)),
        elapsed=float(_latest(records, "elapsed", progress.elapsed if progress else 0.0)),
        best_val_loss=min(evals) if evals else _finite(progress.best_val_loss if progress else None),
        last_val_loss=evals[-1] if evals else _finite(progress.last_val_loss if progress else None),
        state=state,
        stopped_by=stopped_by,
        detail=detail,
        last_change=changed,
    )


def _peek(run_dir: Path) -> Checkpoint | None:
    """The run's newest checkpoint with its tensors mapped, not read; None if it has none readable."""
    try:
        return load_checkpoint(run_dir, prefer=LAST, mmap=True)
    except UserError:
        return None


def _state(records: list[dict[str, Any]], changed: float, now: float) -> tuple[str, str | None, str | None]:
    """(state, stopped_by, detail) from the log's end record, or from how recently the run changed."""
    end = metrics.ending(records)
    if end is None:
        return ("running" if now - changed < RECENT else "unknown"), None, None
    reason = end.get("stopped_by")
    known = reason in StopReason.values()
    state = (
        "finished" if known and StopReason(reason).finished else "signal" if reason == StopReason.SIGNAL else "error"
    )
    return state, reason, end.get("signal") or end.get("error")


def _latest(records: list[dict[str, Any]], key: str, default: float) -> float:
    """The value of ``key`` in the last record that has it (the log runs ahead of ``last.pt``)."""
    return next((r[key] for r in reversed(records) if isinstance(r.get(key), (int, float))), default)


def _finite(value: float | None) -> float | None:
    return value if value is not None and math.isfinite(value) else None
