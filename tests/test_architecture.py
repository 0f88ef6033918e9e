"""The shape of the package: the import contracts cover every part of it (so a new module cannot
slip past them), and no module outgrows one job."""

import pkgutil
import sys
from pathlib import Path

import charlstm

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover
    import tomli as tomllib

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = Path(charlstm.__file__).parent
MAX_LINES = 400


def contracts() -> dict[str, dict]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["importlinter"]
    return {
        c["type"] + ":" + c["forbidden_modules"][0] if "forbidden_modules" in c else c["type"]: c
        for c in config["contracts"]
    }


def top_level() -> set[str]:
    """Every module and subpackage directly under charlstm, but the package's own entry points."""
    return {f"charlstm.{m.name}" for m in pkgutil.iter_modules([str(PACKAGE)])} - {"charlstm.__main__"}


def test_the_layers_name_every_part_of_the_package():
    layers = contracts()["layers"]["layers"]
    named = {part.strip() for layer in layers for part in layer.replace(":", "|").split("|")}
    assert named == top_level()


def test_every_part_but_the_cli_is_kept_from_typer_and_rich_and_every_part_from_numba():
    found = contracts()
    assert set(found["forbidden:typer"]["source_modules"]) == top_level() - {"charlstm.cli"}
    assert set(found["forbidden:numba"]["source_modules"]) == top_level()
    ignored = {line.split(" -> ")[0] for line in found["forbidden:numba"]["ignore_imports"]}
    assert ignored == {"charlstm.sampling.kernels", "charlstm.sampling.slot_kernels", "charlstm.data.kernels"}


def test_only_serving_imports_the_web_framework():
    web = contracts()["forbidden:starlette"]
    assert set(web["source_modules"]) == top_level() - {"charlstm.serving"}
    assert {"starlette", "fastapi", "uvicorn", "prometheus_client"} <= set(web["forbidden_modules"])


def test_only_the_export_imports_onnx():
    onnx = contracts()["forbidden:onnx"]
    assert set(onnx["source_modules"]) == top_level() - {"charlstm.export"}


def test_subpackages_are_one_level_deep_and_no_module_outgrows_one_job():
    subpackages = [m.name for m in pkgutil.iter_modules([str(PACKAGE)]) if m.ispkg]
    assert len(subpackages) >= 5
    for sub in subpackages:
        assert not [m for m in pkgutil.iter_modules([str(PACKAGE / sub)]) if m.ispkg], sub
    long = {
        str(p.relative_to(PACKAGE)): n
        for p in PACKAGE.rglob("*.py")
        if (n := len(p.read_text().splitlines())) > MAX_LINES
    }
    assert not long
