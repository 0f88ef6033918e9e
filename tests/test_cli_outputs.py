"""Every command that writes a file (export, explain --out, plot --out) treats its target alike:
a missing folder is made, as train --out makes its run directory, and an existing file is
replaced only with --overwrite. And info's table speaks in units while --json keeps raw numbers."""

import json
import re

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


def test_a_target_that_is_a_folder_is_one_line(shared_run, tmp_path):
    result = invoke("export", shared_run, tmp_path / "x.safetensors", "--overwrite")
    assert result.exit_code == 0
    (tmp_path / "d.safetensors").mkdir()
    refused = invoke("export", shared_run, tmp_path / "d.safetensors", "--overwrite")
    assert refused.exit_code == 2 and "is a folder, expected the path of a .safetensors file" in refused.stderr


def test_info_speaks_in_units_and_json_keeps_the_raw_numbers(shared_run):
    table = invoke("info", shared_run).stdout
    rows = {
        line.split("│")[1].strip(): line.split("│")[2].strip() for line in table.splitlines() if line.count("│") >= 3
    }
    raw = json.loads(invoke("info", shared_run, "--json").stdout)
    assert rows["params"] == f"{raw['params']:,}" and "," in rows["params"]
    assert rows["step"] == f"{raw['step']:,}"
    assert rows["epoch"] == f"{raw['epoch']:.2f}"
    assert re.fullmatch(r"(\d+m\d\ds|\d+s)", rows["elapsed"])
    assert rows["val_loss"].startswith(f"{raw['val_loss']:.4f} nats/char (") and rows["val_loss"].endswith(" bpc)")
    assert isinstance(raw["elapsed"], float) and isinstance(raw["params"], int)
