"""Each option is declared once (its config field's metadata): the command line, settings files,
the Python API, the presets and the docs' table are built from the declarations, and these tests
fail when one of them disagrees."""

import dataclasses
import re
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from charlstm import api
from charlstm.cli import app
from charlstm.cli.options import shown_default
from charlstm.config import (
    TRAINING,
    EvalConfig,
    ExplainConfig,
    ModelConfig,
    SampleConfig,
    ServeConfig,
    TrainConfig,
    train_options,
)
from charlstm.errors import UserError
from charlstm.options import Panel, declared, split
from charlstm.store import configfile
from charlstm.training import presets

runner = CliRunner()
ROOT = Path(__file__).resolve().parent.parent


def help_lines(*command: str) -> dict[str, str]:
    """Each option's line of ``--help``, wide enough that none wraps, by its flag."""
    page = runner.invoke(app, [*command, "--help"], env={"COLUMNS": "1000"}).stdout
    lines = {}
    for line in page.splitlines():
        found = re.match(r"│\s+(?:\*\s+)?(--[a-z-]+)", line)
        if found:
            lines[found.group(1)] = line
    return lines


def plain(text: str) -> str:
    """Help text as rich prints it: markup gone, the escaped bracket a bracket."""
    return re.sub(r"\[/?dim\]", "", text).replace("\\[", "[")


@pytest.mark.parametrize(
    ("command", "options"),
    [
        (("train",), train_options()),
        (("sample",), declared(SampleConfig)),
        (("eval",), declared(EvalConfig)),
        (("explain",), declared(ExplainConfig)),
        (("serve",), declared(ServeConfig)),
    ],
)
def test_help_lists_exactly_the_declared_options_with_their_help_and_default(command, options):
    lines = help_lines(*command)
    extra = {"train": {"--config"}, "eval": {"--json"}}.get(command[0], set())
    assert set(lines) == {d.flag for d in options} | extra | {"--help"}
    for d in options:
        line = re.sub(r"\s+", " ", lines[d.flag])
        assert d.help in line, d.name
        shown = shown_default(d) if command == ("train",) else d.option.shown
        if shown is not None and not d.option.negatable:
            assert f"[default: {plain(shown)}]" in line, d.name


def test_train_help_groups_the_options_in_the_declared_panels():
    page = runner.invoke(app, ["train", "--help"], env={"COLUMNS": "1000"}).stdout
    panels = [m.group(1) for m in re.finditer(r"╭─ (\w+) ─", page)]
    assert panels == ["Options", *(p.value for p in Panel)]
    for panel in Panel:
        section = page.split(f"╭─ {panel.value} ")[1].split("╰")[0]
        shown = re.findall(r"│\s+(--[a-z-]+)", section)
        expected = [d.flag for d in train_options() if d.option.panel is panel]
        assert shown == (["--config"] if panel is Panel.DATA else []) + expected


def test_every_config_field_is_an_option_except_what_follows_from_the_corpus():
    fields = {f.name for config in TRAINING for f in dataclasses.fields(config)}
    assert fields - {d.name for d in declared(*TRAINING)} == {"vocab_size"}


def test_split_gives_each_config_its_own_fields_and_leaves_the_rest_out():
    train, model = split({"hidden": 256, "lr": 0.01, "weight_drop": 0.3, "nonsense": 1}, *TRAINING)
    assert train == {"lr": 0.01} and model == {"hidden": 256, "weight_drop": 0.3}
    assert ModelConfig(**model).weight_drop == 0.3 and TrainConfig(**train).lr == 0.01


def test_presets_size_exactly_the_options_declared_sized():
    preset_fields = {f.name for f in dataclasses.fields(presets.Preset)} - {"name"}
    assert preset_fields == set(presets.SIZED) == {d.name for d in train_options() if d.option.sized}


def test_settings_files_read_every_option_by_its_declared_kind(tmp_path):
    samples = {int: "3", float: "0.5", str: '"x"', bool: "true"}
    for d in train_options():
        path = tmp_path / f"{d.name}.toml"
        path.write_text(f"{d.flag[2:]} = {samples[d.kind]}\n")
        if d.name in ("cell", "byte_fallback", "preset", "schedule", "device", "precision"):
            with pytest.raises(UserError, match=d.flag):  # a string, but not one of the choices
                configfile.read_options(path)
        elif d.name in ("val_fraction", "dropout", "weight_drop", "embed_dropout", "min_lr_ratio"):
            assert configfile.read_options(path) == {d.name: 0.5}
        else:
            assert d.name in configfile.read_options(path), d.name


def test_the_api_refuses_a_keyword_that_no_option_declares(tmp_path):
    with pytest.raises(UserError, match="unknown training option 'hiden'; did you mean 'hidden'"):
        api.train(corpus="x", hiden=3)


def test_the_docs_options_table_is_generated_from_the_declarations():
    result = subprocess.run([sys.executable, "scripts/options_table.py", "--check"], cwd=ROOT, capture_output=True)
    assert result.returncode == 0, result.stderr.decode()
    table = (ROOT / "docs" / "options.md").read_text()
    for d in train_options():
        assert f"| `{d.flag}` |" in table
