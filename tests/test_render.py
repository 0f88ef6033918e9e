"""The command line's training view, fed events directly and drawn into a recording console."""

import math
from pathlib import Path

from rich.console import Console

from charlstm.events import Evaluated, Finished, Progress, Started, TrainResult
from charlstm.render import TrainView


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
        view.on_event(Evaluated(20, 2.5, True, "KING:\nthe lord"))
        view.on_event(Finished(result()))
    text = out.export_text()
    assert "4,790 parameters on cpu (fp32)" in text and "18,000 training / 2,000 validation" in text
    assert "step 20: val loss 2.5000 (best)" in text and "KING:" in text
    for row in ("steps", "40", "stopped by", "max_steps", "1.5000 nats/char", "1m15s", "12,345 chars/s"):
        assert row in text, row


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
