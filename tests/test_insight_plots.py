"""Charts from run logs: the curves drawn, real PNG and SVG files of two runs, the terminal chart,
and one clear line when the plot extra is missing."""

import sys
import xml.etree.ElementTree as ET

import pytest

from charlstm.errors import UserError
from charlstm.insight import plots
from charlstm.store import metrics

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def log_run(folder, scale=1.0):
    """A run's log: training lines every 5 steps, evaluations every 10, an end record."""
    folder.mkdir(parents=True)
    for step in range(5, 45, 5):
        record = {"type": "train", "step": step, "epoch": step / 40, "elapsed": step / 2}
        metrics.append(folder, {**record, "loss": scale * (3 - step / 20), "lr": 0.01 * (1 - step / 50)})
        if step % 10 == 0:
            loss = scale * (2.5 - step / 40 + (0.3 if step == 40 else 0))  # the best is the one before the last
            metrics.append(
                folder, {"type": "eval", "step": step, "epoch": step / 40, "elapsed": step / 2, "val_loss": loss}
            )
    metrics.append(folder, metrics.end_record(40, 20.0, "max_steps"))
    return folder


def test_curves_follow_the_log_against_each_x_axis(tmp_path):
    run = log_run(tmp_path / "a")
    [by_step] = plots.run_curves([run])
    assert by_step.name == "a" and by_step.train.xs == list(range(5, 45, 5)) and by_step.val.xs == [10, 20, 30, 40]
    assert by_step.train.ys[0] == 2.75 and by_step.lr.ys[-1] == pytest.approx(0.01 * (1 - 40 / 50))
    assert by_step.best == (30, 2.5 - 30 / 40)
    [by_time] = plots.run_curves([run], "time")
    assert by_time.val.xs == [5.0, 10.0, 15.0, 20.0] and by_time.best == (15.0, 2.5 - 30 / 40)
    [by_epoch] = plots.run_curves([run], "epoch")
    assert by_epoch.train.xs[-1] == 1.0


def test_names_are_folder_names_unless_two_runs_share_one(tmp_path):
    assert plots.run_names([tmp_path / "x" / "run", tmp_path / "other"]) == ["run", "other"]
    same = [str(tmp_path / "x" / "run"), str(tmp_path / "y" / "run")]
    assert plots.run_names(same) == same


def test_png_and_svg_of_two_runs_overlaid(tmp_path, shared_run):
    runs = [shared_run, log_run(tmp_path / "second", scale=1.2)]
    png = plots.save_chart(runs, tmp_path / "chart.png")
    assert png.read_bytes().startswith(PNG_MAGIC) and png.stat().st_size > 10_000
    svg = plots.save_chart(runs, tmp_path / "chart.svg", x="time")
    texts = {"".join(e.itertext()).strip() for e in ET.parse(svg).iter() if e.tag.endswith("text")}
    best = min(r["val_loss"] for r in metrics.read(shared_run) if r["type"] == "eval")
    for label in ("run train", "run val", "run lr", f"run best val {best:.4f}", "second train", "second val"):
        assert label in texts, label
    assert "time trained (s)" in texts and "second best val 2.1000" in texts  # 1.2 x 1.75
    assert not list(tmp_path.glob(".*.tmp"))


def test_a_chart_in_the_terminal(tmp_path):
    runs = [log_run(tmp_path / "first"), log_run(tmp_path / "second", scale=1.2)]
    chart = plots.text_chart(runs, width=90, height=24, color=False)
    lines = chart.splitlines()
    assert len(lines) <= 24 and max(len(line) for line in lines) <= 90 and "\x1b" not in chart
    for label in ("first: best val 1.7500", "second: best val 2.1000", "step", "learning rate", "o val loss"):
        assert label in chart, label
    plot_area = "\n".join(line for line in lines if "o val loss" not in line)  # the title holds a key of markers
    assert plot_area.count("*") == 2 and "." in plot_area  # a best point a run, the learning rate
    assert "\x1b[" in plots.text_chart(runs, width=90, height=24, color=True)
    assert plots.text_chart(runs, width=90, height=24, color=False) == chart  # nothing piles up between charts


@pytest.mark.parametrize("module, draw", [("matplotlib", "file"), ("plotext", "terminal")])
def test_without_the_plot_extra_one_line_names_it(tmp_path, monkeypatch, module, draw):
    monkeypatch.setitem(sys.modules, module, None)  # what an import of a package not installed does
    run = log_run(tmp_path / "a")
    with pytest.raises(
        UserError, match=r"needs " + module + r", which is not installed: pip install 'charlstm\[plot\]'"
    ):
        if draw == "file":
            plots.save_chart([run], tmp_path / "chart.png")
        else:
            plots.text_chart([run])
    assert not (tmp_path / "chart.png").exists()


def test_bad_input_is_one_error(tmp_path):
    run = log_run(tmp_path / "a")
    (tmp_path / "empty").mkdir()
    metrics.append(tmp_path / "empty", metrics.end_record(0, 0.0, "error", error="boom"))
    for call, needle in [
        (lambda: plots.run_curves([tmp_path]), "holds no metrics.jsonl"),
        (lambda: plots.run_curves([tmp_path / "empty"]), "no training or evaluation lines"),
        (lambda: plots.run_curves([run], "chars"), "--x 'chars' is not valid, expected one of step, time, epoch"),
        (lambda: plots.run_curves([]), "no run directory given"),
        (lambda: plots.save_chart([run], tmp_path / "chart.jpg"), "must end in .png, .svg, .pdf"),
        (lambda: plots.save_chart([run], tmp_path / "a" / "metrics.jsonl" / "chart.png"), "cannot write to"),
    ]:
        with pytest.raises(UserError, match=needle):
            call()
