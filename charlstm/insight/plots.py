"""Charts of training runs from their logs (``metrics.jsonl``): ``charlstm plot``.

Training and validation loss against steps, time trained or epochs, the learning rate on a second
axis, the lowest validation loss marked, several runs overlaid. Files are drawn by matplotlib
(PNG, SVG, PDF), the terminal's chart by plotext: both are the optional extra ``charlstm[plot]``,
imported only here and only when asked for. Nothing here needs torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from charlstm.errors import UserError
from charlstm.files import atomic_path, output_file
from charlstm.store import metrics

X_AXES = {"step": ("step", "step"), "time": ("elapsed", "time trained (s)"), "epoch": ("epoch", "epoch")}
FILE_TYPES = ("png", "svg", "pdf")
EXTRA = "pip install 'charlstm[plot]'"
# plotext's colors, one per run (its own sequence would give each line of a run another color)
TERMINAL_COLORS = ("blue", "red", "green", "magenta", "cyan", "yellow")


@dataclass
class Curve:
    xs: list[float] = field(default_factory=list)
    ys: list[float] = field(default_factory=list)


@dataclass
class RunCurves:
    """What a chart draws of one run."""

    name: str
    train: Curve  # mean training loss between log lines
    val: Curve  # validation loss at each evaluation
    lr: Curve  # learning rate at each log line
    best: tuple[float, float] | None  # (x, loss) of the lowest validation loss


def run_curves(run_dirs: Sequence[str | Path], x: str = "step") -> list[RunCurves]:
    """The curves of each run, against ``x``: ``step``, ``time`` (seconds trained) or ``epoch``."""
    if x not in X_AXES:
        raise UserError(f"--x {x!r} is not valid, expected one of {', '.join(X_AXES)}")
    if not run_dirs:
        raise UserError("no run directory given, expected one or more folders written by charlstm train")
    names = run_names(run_dirs)
    return [_curves(metrics.read(d), name, X_AXES[x][0], d) for d, name in zip(run_dirs, names, strict=True)]


def run_names(run_dirs: Sequence[str | Path]) -> list[str]:
    """A legend's name for each run: its folder's name, or the path as given where two share one."""
    names = [Path(d).expanduser().resolve().name or str(d) for d in run_dirs]
    return [str(d) if names.count(n) > 1 else n for d, n in zip(run_dirs, names, strict=True)]


def _curves(records: list[dict[str, Any]], name: str, x_key: str, run_dir: str | Path) -> RunCurves:
    train, val, lr = Curve(), Curve(), Curve()
    for r in records:
        if not isinstance(r.get(x_key), (int, float)):
            continue  # an end record, or a line written before that field existed
        points = {"train": ((train, "loss"), (lr, "lr")), "eval": ((val, "val_loss"),)}.get(r.get("type"), ())
        for curve, y_key in points:
            curve.xs.append(r[x_key])
            curve.ys.append(r[y_key])
    if not (train.xs or val.xs):
        raise UserError(
            f"run directory {str(run_dir)!r} has no training or evaluation lines in {metrics.METRICS} yet, "
            f"expected a run that has logged at least once"
        )
    best = min(zip(val.ys, val.xs, strict=True), default=None)
    return RunCurves(name, train, val, lr, (best[1], best[0]) if best else None)


def _extra(module: str, what: str) -> ModuleType:
    """An optional module of the ``plot`` extra, or one line saying how to install it."""
    import importlib

    try:
        return importlib.import_module(module)
    except ImportError:
        raise UserError(f"{what} needs {module}, which is not installed: {EXTRA}") from None


def save_chart(run_dirs: Sequence[str | Path], out: str | Path, x: str = "step", overwrite: bool = False) -> Path:
    """Draw the runs into ``out`` (``.png``, ``.svg`` or ``.pdf``) with matplotlib; returns its path.
    An existing ``out`` is replaced only with ``overwrite``."""
    out = Path(out).expanduser()
    kind = out.suffix.lower().lstrip(".")
    if kind not in FILE_TYPES:
        raise UserError(f"--out {str(out)!r} must end in {', '.join('.' + t for t in FILE_TYPES)}")
    out = output_file(out, overwrite, "--out", "the path of a chart file")
    runs = run_curves(run_dirs, x)
    matplotlib = _extra("matplotlib", "a chart file")
    figure = _figure(runs, X_AXES[x][1])
    try:
        with matplotlib.rc_context({"svg.fonttype": "none"}), atomic_path(out) as tmp:  # SVG text stays text
            figure.savefig(tmp, format=kind, dpi=150)
    except OSError as e:
        raise UserError(f"could not write {str(out)!r} ({e.strerror or e})") from None
    return out


def _figure(runs: list[RunCurves], x_label: str) -> Any:
    """A matplotlib Figure (no pyplot, so no global state or display): losses left, learning rate right."""
    from matplotlib.figure import Figure

    figure = Figure(figsize=(10, 6), layout="constrained")
    loss_ax = figure.add_subplot()
    lr_ax = loss_ax.twinx()
    for i, run in enumerate(runs):
        color = f"C{i % 10}"
        loss_ax.plot(run.train.xs, run.train.ys, color=color, lw=1, alpha=0.5, label=f"{run.name} train")
        loss_ax.plot(run.val.xs, run.val.ys, color=color, lw=2, marker="o", ms=3, label=f"{run.name} val")
        lr_ax.plot(run.lr.xs, run.lr.ys, color=color, lw=1, ls=":", label=f"{run.name} lr")
        if run.best:
            label = f"{run.name} best val {run.best[1]:.4f}"
            loss_ax.plot(*run.best, marker="*", ms=15, ls="none", color=color, mec="black", label=label)
    loss_ax.set(xlabel=x_label, ylabel="loss (nats/char)", title="charlstm: " + ", ".join(r.name for r in runs))
    lr_ax.set_ylabel("learning rate (dotted)")
    loss_ax.grid(alpha=0.3)
    (loss_handles, loss_labels), (lr_handles, lr_labels) = (a.get_legend_handles_labels() for a in (loss_ax, lr_ax))
    handles, labels = loss_handles + lr_handles, loss_labels + lr_labels
    loss_ax.legend(handles, labels, fontsize="small", loc="upper right")
    return figure


def text_chart(
    run_dirs: Sequence[str | Path], x: str = "step", width: int = 100, height: int = 30, color: bool = True
) -> str:
    """The runs as a chart of ``width`` x ``height`` terminal cells, drawn by plotext."""
    runs = run_curves(run_dirs, x)
    plotext = _extra("plotext", "a chart in the terminal")
    fig = plotext.figure  # plotext draws on one module-wide figure: cleared first, so charts never pile up
    fig.clear()
    fig.plot_size(width, height)
    fig.theme("simple" if color else "colorless")  # "simple": the terminal's own background
    pens = [TERMINAL_COLORS[i % len(TERMINAL_COLORS)] for i in range(len(runs))]
    for run, pen in zip(runs, pens, strict=True):  # one legend line a run; the title tells the lines apart
        best = f": best val {run.best[1]:.4f}" if run.best else ""
        _line(plotext, run.train, None, plotext.marker("hd", pen))
        _line(plotext, run.val, f"{run.name}{best}", plotext.marker("o", pen))
        _line(plotext, run.lr, None, plotext.marker(".", pen), yside="right")
    for run, pen in zip(runs, pens, strict=True):  # drawn last, so that no other line covers them
        if run.best:
            _line(plotext, Curve([run.best[0]], [run.best[1]]), None, plotext.marker("*", pen), lines=False)
    fig.title("o val loss  ▚ train loss  . lr (right)  * best")
    fig.label(X_AXES[x][1], "x")
    fig.label("loss (nats/char)", "y")
    fig.label("learning rate", "y", "right")
    return fig.build().string(colorless=not color)


def _line(
    plotext: ModuleType, curve: Curve, label: str | None, marker: Any, yside: str = "left", lines: bool = True
) -> None:
    if not curve.xs:
        return
    signal = plotext.figure.signal(curve.xs, curve.ys, marker=marker, yside=yside)
    signal = signal.lines() if lines else signal
    plotext.figure.draw(signal.label(label) if label else signal)
