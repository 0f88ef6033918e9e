"""The command line's training view, fed events directly and drawn into a recording console."""

import io
import math
import re
import signal
from pathlib import Path

import pytest
from rich.console import Console

from charlstm.cli.train_view import PlainView, TrainView, fit_status, train_view
from charlstm.training.events import Compiling, Evaluated, Finished, Progress, Started, TrainResult


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


SHOWN_AT_120 = ("step 90", "loss 1.934", "val -", "lr 2.92e-02", "69.9k chars/s", "23s left")


def progress(step: int = 90) -> Progress:
    return Progress(step, 0.5, 1.934, 2.92e-2, 69_900.0, 3.0, 0.11, 23.0)


def drawn_bar(view: TrainView, width: int) -> list[str]:
    """The bar's lines as a terminal of ``width`` columns shows them."""
    screen = Console(width=width, record=True, file=io.StringIO(), force_terminal=True, color_system=None)
    screen.print(view.bar.get_renderable())
    return screen.export_text().splitlines()


@pytest.mark.parametrize(("width", "shown"), [(80, ("step 90", "loss 1.934", "23s left")), (120, SHOWN_AT_120)])
def test_the_live_line_fits_the_terminal_dropping_figures_by_priority(width, shown):
    out = Console(width=width, file=io.StringIO(), force_terminal=True)
    with TrainView(out) as view:
        view.on_event(Started(Path("runs/a"), 4790, "cpu", "fp32", 64, 18_000, 2_000, 0))
        view.on_event(progress())
        lines = drawn_bar(view, width)
    bar = next(line for line in lines if "train" in line)
    assert all(len(line) <= width for line in lines) and "…" not in bar
    assert all(figure in bar for figure in shown), bar
    assert "%" in bar and "0:00:" in bar  # the share of the budget and the time elapsed stay whole


def test_fit_status_keeps_the_most_wanted_figures_in_their_order():
    figures = {
        "step": "step 9",
        "loss": "loss 1.0",
        "val": "val -",
        "lr": "lr 1e-2",
        "speed": "9k chars/s",
        "left": "5s",
    }
    assert fit_status(figures, 1000) == "step 9  loss 1.0  val -  lr 1e-2  9k chars/s  5s"
    assert fit_status(figures, len("step 9  loss 1.0  5s")) == "step 9  loss 1.0  5s"
    assert fit_status(figures, 1) == ""


def test_a_log_file_gets_plain_lines_and_progress_at_most_every_30_s():
    now = [0.0]
    out = Console(width=40, record=True, file=io.StringIO(), force_terminal=False)
    view = train_view(out)
    assert isinstance(view, PlainView)
    view.clock = lambda: now[0]
    view.on_event(Started(Path("runs/a/with/a/long/name"), 4790, "cpu", "fp32", 64, 18_000, 2_000, 0))
    for t, step in ((0.0, 10), (10.0, 20), (29.0, 30), (31.0, 40), (45.0, 50), (62.0, 60)):
        now[0] = t
        view.on_event(progress(step))
    view.on_event(Compiling())
    view.on_event(Evaluated(60, 2.5, True, "KING:\nthe lord", 62.0))
    text = out.export_text()
    lines = text.splitlines()
    assert [m.group(1) for line in lines if (m := re.match(r"step (\d+) \(\d+%\)", line))] == [
        "10",
        "40",
        "60",
    ]
    assert any(
        line.startswith("charlstm 4,790 parameters") and line.endswith("runs/a/with/a/long/name") for line in lines
    )
    assert "compiling the sampling kernels (once per installation" in text
    assert "step 60: val loss 2.5000 (best), 1m02s trained" in lines and "sample: KING: ↵ the lord" in lines
    assert "\x1b" not in text and "\r" not in text
    progress_line = next(line for line in lines if line.startswith("step 40 ("))
    for figure in ("loss 1.934", "lr 2.92e-02", "69.9k chars/s", "23s left"):
        assert figure in progress_line


def test_the_live_view_says_what_a_first_compile_waits_for():
    out = Console(width=120, file=io.StringIO(), force_terminal=True)
    with TrainView(out) as view:
        view.on_event(Started(Path("runs/a"), 4790, "cpu", "fp32", 64, 18_000, 2_000, 0))
        view.on_event(Compiling())
        assert view.bar.tasks[0].fields["status"] == "compiling"
        view.on_event(Compiling(done=True, seconds=12.4))
        assert view.bar.tasks[0].fields["status"] == "starting"
    text = re.sub(r"\x1b\[[0-9;?]*[a-zA-Z]", "", out.file.getvalue())
    assert (
        "compiling the sampling kernels (once per installation" in text
        and "compiled the sampling kernels in 12s" in text
    )
