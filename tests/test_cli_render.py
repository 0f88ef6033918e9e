"""The command line's training view, fed events directly and drawn into a recording console."""

import math
import signal
from pathlib import Path

from rich.console import Console

from charlstm.cli.render import TrainView
from charlstm.training.events import Evaluated, Finished, Progress, Started, TrainResult


def console() -> Console:
    return Console(record=True, width=160, force_terminal=False)


def result(stopped_by: str = "max_steps", best: float = 1.5) -> TrainResult:
    resume = "charlstm train --resume runs/a"
    return TrainResult(Path("runs/a"), 40, 2.5, 75.0, best, 1.6, 1.4, 12_345.0, stopped_by, resume)


def test_a_run_is_drawn_from_its_events():
    out = console()
    with TrainView(out) as view:
        view.on_event(Started(Path("runs/a"), 4790, "cpu", "fp32", 64, 18_000, 2_000, 0))
        view.on_event(Progress(10, 0.5, 2.9, 1e-2, 5000.0, 3.0, 0.25, 9.0))
        view.on_event(Evaluated(20, 2.5, True, "KING:\nthe lord", 62.0))
        view.on_event(Finished(result()))
    text = out.export_text()
    assert "4,790 parameters on cpu (fp32)" in text and "18,000 training / 2,000 validation" in text
    assert "step 20: val loss 2.5000 (best), 1m02s trained" in text and "KING:" in text
    for row in (
        "steps",
        "40",
        "stopped by",
        "--max-steps (budget spent)",
        "1.5000 nats/char",
        "1m15s",
        "12,345 chars/s",
    ):
        assert row in text, row


def test_the_bar_ends_on_the_final_evaluation():
    """The last evaluation comes after the last log line: the bar's final state must show it."""
    view = TrainView(console())
    view.on_event(Started(Path("runs/a"), 4790, "cpu", "fp32", 64, 18_000, 2_000, 0))
    view.on_event(Progress(30, 0.5, 2.9, 1e-2, 5000.0, 3.0, 0.75, 9.0))
    view.on_event(Evaluated(30, 2.7, True, ""))
    view.on_event(Progress(38, 0.6, 2.6, 1e-3, 5000.0, 3.0, 0.95, 1.0))
    view.on_event(Evaluated(40, 2.4567, True, ""))
    status = view.bar.tasks[0].fields["status"]
    assert "step 40" in status and "val 2.4567" in status and "val 2.7000" not in status
    view.on_event(Finished(result()))
    task = view.bar.tasks[0]
    assert task.completed == 1.0 and "step 40" in task.fields["status"] and "loss 1.400" in task.fields["status"]
    assert "val 1.6000" in task.fields["status"]  # the result's last validation loss


def test_stopped_and_finished_runs_end_with_the_same_table():
    tables = {}
    for how in ("max_time", "signal"):
        out = console()
        view = TrainView(out)
        stopped = result(how)
        stopped.signal = signal.SIGTERM if how == "signal" else None
        view.on_event(Finished(stopped))
        text = out.export_text()
        tables[how] = text[text.index("charlstm train") :]
        assert text.rstrip().endswith("┘")  # the table is the last thing drawn
    rows = {how: [line.split("│")[1].strip() for line in t.splitlines() if "│" in line] for how, t in tables.items()}
    assert rows["max_time"] == rows["signal"] and "stopped by" in rows["signal"]
    assert "signal (SIGTERM)" in tables["signal"] and "--max-time (budget spent)" in tables["max_time"]
    assert "resume with:" not in tables["signal"]  # above the table, as plain text (tested in test_cli)


def test_losses_never_measured_show_a_dash():
    out = console()
    view = TrainView(out)
    view.on_event(Finished(result("signal", best=math.inf)))
    assert "best val loss │ - nats/char (- bpc)" in out.export_text()


def test_a_view_never_started_prints_nothing():
    out = console()
    with TrainView(out):
        pass
    assert out.export_text() == ""
