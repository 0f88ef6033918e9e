"""Every command that writes a file (export, explain --out, plot --out) treats its target alike:
a missing folder is made, as train --out makes its run directory, and an existing file is
replaced only with --overwrite. And info's table speaks in units while --json keeps raw numbers."""

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlstm.cli import app

runner = CliRunner()


def invoke(*args):
    return runner.invoke(app, [str(a) for a in args])


def writers(shared_run, tmp_path):
    """Each command that writes a file, as a function of its target."""
    text = tmp_path / "text.txt"
    text.write_text("KING:\nMy lord the night is long.\n" * 20, encoding="utf-8")
    return {
        "export": lambda out, *more: invoke("export", shared_run, out, *more),
        "explain": lambda out, *more: invoke(
            "explain", shared_run, "--text", text, "--out", out, "--chars", 200, *more
        ),
        "plot": lambda out, *more: invoke("plot", shared_run, "--out", out, *more),
    }


SUFFIX = {"export": ".safetensors", "explain": ".html", "plot": ".png"}


@pytest.mark.parametrize("command", ["export", "explain", "plot"])
def test_a_missing_folder_is_made_as_train_makes_its_run_directory(shared_run, tmp_path, command):
    out = tmp_path / "some" / "new" / "folder" / f"result{SUFFIX[command]}"
    result = writers(shared_run, tmp_path)[command](out)
    assert result.exit_code == 0, result.stderr
    assert out.is_file() and out.stat().st_size > 0 and str(out) in "".join(result.stderr.split())


@pytest.mark.parametrize("command", ["export", "explain", "plot"])
def test_an_existing_file_is_replaced_only_with_overwrite(shared_run, tmp_path, command):
    out = tmp_path / f"result{SUFFIX[command]}"
    out.write_bytes(b"precious")
    write = writers(shared_run, tmp_path)[command]
    refused = write(out)
    assert refused.exit_code == 2 and "Traceback" not in refused.stderr
    assert refused.stderr.strip().splitlines() == [refused.stderr.strip()]  # one line
    assert "already exists; pass --overwrite to replace it" in refused.stderr and str(out) in refused.stderr
    assert out.read_bytes() == b"precious"  # nothing lost
    replaced = write(out, "--overwrite")
    assert replaced.exit_code == 0, replaced.stderr
    assert out.read_bytes() != b"precious"


@pytest.mark.parametrize("command", ["export", "explain", "plot"])
@pytest.mark.skipif(not Path("/proc/self").is_dir(), reason="needs a /proc, a folder that takes no new file")
def test_a_folder_that_takes_no_file_is_one_line(shared_run, tmp_path, command):
    refused = writers(shared_run, tmp_path)[command](Path("/proc") / f"result{SUFFIX[command]}")
    assert refused.exit_code == 2 and refused.stderr.startswith("error: cannot write to '/proc/result")
    assert len(refused.stderr.strip().splitlines()) == 1 and "Traceback" not in refused.output


def test_a_target_that_is_a_folder_is_one_line(shared_run, tmp_path):
    result = invoke("export", shared_run, tmp_path / "x.safetensors", "--overwrite")
    assert result.exit_code == 0
    (tmp_path / "d.safetensors").mkdir()
    refused = invoke("export", shared_run, tmp_path / "d.safetensors", "--overwrite")
    assert refused.exit_code == 2 and "is a folder, expected the path of a .safetensors file" in refused.stderr


def test_info_speaks_in_units_and_json_keeps_the_raw_numbers(shared_run):
    rows = info_rows(shared_run)
    raw = json.loads(invoke("info", shared_run, "--json").stdout)
    assert rows["params"] == f"{raw['params']:,}" and "," in rows["params"]
    assert rows["step"] == f"{raw['step']:,}"
    assert rows["epoch"] == f"{raw['epoch']:.2f}"
    assert re.fullmatch(r"(\d+m\d\ds|\d+s)", rows["elapsed"])
    assert rows["best val loss"].startswith(f"{raw['val_loss']:.4f} nats/char (")
    assert rows["best val loss"].endswith(" bpc)")
    assert isinstance(raw["elapsed"], float) and isinstance(raw["params"], int)


def info_rows(*args):
    table = invoke("info", *args).stdout
    return {
        line.split("│")[1].strip(): line.split("│")[2].strip() for line in table.splitlines() if line.count("│") >= 3
    }


def test_info_names_the_checkpoints_loss_and_shows_the_runs_last_one(run_copy):
    """best.pt's last evaluation is the best one; the run may have evaluated worse after it."""
    best = json.loads(invoke("info", run_copy, "--json").stdout)
    records = [json.loads(line) for line in (run_copy / "metrics.jsonl").read_text().splitlines()]
    last_eval = [r for r in records if r["type"] == "eval"][-1]
    assert (best["run_last_val_loss"], best["run_last_eval_step"]) == (last_eval["val_loss"], last_eval["step"])
    later = {**last_eval, "step": last_eval["step"] + 50, "val_loss": best["val_loss"] + 0.25, "best": False}
    with open(run_copy / "metrics.jsonl", "a") as f:  # a later, worse evaluation, as long runs have
        f.write(json.dumps(later) + "\n")
    rows = info_rows(run_copy)
    assert rows["last eval's val loss"].startswith(f"{best['last_val_loss']:.4f} nats/char")
    assert rows["run's last val loss"].startswith(f"{later['val_loss']:.4f} nats/char")
    assert rows["run's last val loss"].endswith(f"at step {later['step']:,}")
    assert "last_val_loss" not in rows and "val_loss" not in rows  # every loss row says what it is
    copied = run_copy / "elsewhere.pt"  # a checkpoint outside its run directory: the run is not known
    copied.write_bytes((run_copy / "best.pt").read_bytes())
    alone = json.loads(invoke("info", copied, "--json").stdout)
    assert alone["run_last_val_loss"] is None and "run's last val loss" not in info_rows(copied)


def test_runs_never_cut_a_runs_name_and_fit_the_terminal():
    """'tinyshakes / peare' at 80 columns: the names are what other commands take, so the corpus
    column shrinks and the least needed columns go before a name is broken."""
    from rich.console import Console

    from charlstm.cli.render import RUN_COLUMNS, RUNS_DROPPED_FIRST, runs_table
    from charlstm.insight.runs import RunSummary
    from charlstm.store.checkpoint import Lineage

    names = ["tinyshakespeare", "tinyshakespeare-h256-again", "h256"]
    facts = dict(corpus="corpora/tinyshakespeare.txt", cell="lstm", layers=1, hidden=512, params=1_216_577)
    facts |= dict(steps=1454, elapsed=120.4, best_val_loss=1.4254, last_val_loss=1.4301, state="finished")
    facts |= dict(stopped_by="max_time", detail=None, last_change=1000.0)
    runs = [RunSummary(name=name, path=f"checkpoints/{name}", **facts) for name in names]
    lineage = Lineage("checkpoints/tinyshakespeare/best.pt", "ab" * 32, 1454)
    for tuned in (False, True):  # the base column only where some run has a base
        if tuned:
            runs[1].lineage = lineage
        columns = [c for c in RUN_COLUMNS if tuned or c != "base"]
        dropped = [c for c in RUNS_DROPPED_FIRST if c in columns]
        for width in (140, 120, 100, 80, 60, 40):
            console = Console(width=width, record=True, color_system=None)
            console.print(runs_table(runs, "checkpoints", 1060.0, width))
            lines = console.export_text().splitlines()
            assert all(len(line) <= width for line in lines)
            header = next(line for line in lines if line.startswith("run "))
            shown = header.split()
            assert shown == [c for c in columns if c in shown]  # in their order, none renamed or cut
            assert set(columns) - set(shown) == set(dropped[: len(columns) - len(shown)])
            for name in names:  # each name whole, at the start of its own row
                assert any(line.split()[0] == name for line in lines if line.strip()), (width, lines)
            if width >= 120:
                row = next(line for line in lines if line.startswith("tinyshakespeare-h256-again "))
                assert shown == columns and (not tuned or row.split()[2] == "tinyshakespeare")
            if width == 80:
                assert {"model", "best", "last", "state"} <= set(shown)
