"""Settings files for ``charlstm train --config FILE.toml``, and the ``config.toml`` every run
directory gets, so that ``charlstm train --config RUN_DIR/config.toml --out NEW`` repeats a run.

A file is flat: its keys are the options of ``charlstm train`` spelled as on the command line
without the dashes (``max-time = 120``); the Python spelling (``max_time``) is read as the same
key. Paths in it are read as on the command line, from the working directory. Written files use
the command line's spelling. Kept free of torch: reading one is part of parsing the command line.
"""

from __future__ import annotations

import difflib
import json
import shlex
import sys
from pathlib import Path
from typing import Any

from charlstm.config import ModelConfig, TrainConfig, train_options, training_configs
from charlstm.errors import UserError
from charlstm.files import atomic_write
from charlstm.options import option

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - the same parser, before it joined the standard library
    import tomli as tomllib

CONFIG = "config.toml"
KINDS = {d.name: d.kind.__name__ for d in train_options()}  # every option of charlstm train, and its value's kind
EXPECTED = {"int": "a whole number", "float": "a number", "str": "a quoted string", "bool": "true or false"}


def key(name: str) -> str:
    """The spelling of a setting in a file: ``max_time`` -> ``max-time``."""
    return name.replace("_", "-")


def read_options(path: str | Path) -> dict[str, Any]:
    """The options a settings file gives, by their Python names (``max_time``), each checked to be
    a known option with a value of the right kind: anything else is one error naming it."""
    path = Path(path).expanduser()
    data = _parse(path)
    options: dict[str, Any] = {}
    for spelled, value in data.items():
        name = _known(path, spelled)
        if name in options:
            raise UserError(f"config file {str(path)!r} gives {key(name)} twice, expected each option once")
        options[name] = _checked(path, name, value)
    _valid(path, options)
    return options


def _valid(path: Path, options: dict[str, Any]) -> None:
    """Each value in range and among its choices, checked as the configs check them, and named
    as the file's: a value the command line overrides is refused all the same, as a broken file."""
    try:
        training_configs(options)
    except UserError as e:
        raise UserError(f"config file {str(path)!r}: {e}") from None


def _parse(path: Path) -> dict[str, Any]:
    if not path.is_file():
        what = "is a folder" if path.is_dir() else "does not exist"
        raise UserError(f"config file {str(path)!r} {what}, expected a TOML file of charlstm train options")
    try:
        with open(path, "rb") as f:
            return tomllib.load(f)
    except tomllib.TOMLDecodeError as e:
        raise UserError(f"config file {str(path)!r} is not valid TOML ({e})") from None
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"config file {str(path)!r} cannot be read ({e})") from None


def _known(path: Path, spelled: str) -> str:
    """The Python name of a key, refusing one that is not an option of ``charlstm train``."""
    name = spelled.replace("-", "_")
    if name in KINDS:
        return name
    close = difflib.get_close_matches(key(name), [key(k) for k in KINDS], n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    raise UserError(
        f"config file {str(path)!r} has an unknown option {spelled!r}; {hint}expected options of "
        f"charlstm train (see charlstm train --help), e.g. max-time = 120"
    )


def _checked(path: Path, name: str, value: Any) -> Any:
    """``value`` if it is of the option's kind (a whole number is also a number), else an error."""
    kind = KINDS[name]
    if kind == "float" and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if type(value).__name__ == kind:  # exact: True is not a whole number here, 512.0 is not one either
        return value
    shown = json.dumps(value) if isinstance(value, (str, int, float, bool, list)) else repr(value)
    raise UserError(
        f"config file {str(path)!r}: {key(name)} = {shown} is not valid, expected {EXPECTED[kind]} ({option(name)})"
    )


def settings(tcfg: TrainConfig, mcfg: ModelConfig, precision: str | None = None) -> dict[str, Any]:
    """A run's settings as a file holds them: every option that has a value, by its file spelling
    and in the order of ``--help``; ``precision`` replaces ``auto`` with the choice it measured,
    so that a repeat runs as this did."""
    values = {**tcfg.to_dict(), **mcfg.to_dict()}
    if precision is not None:
        values["precision"] = precision
    return {key(d.name): values[d.name] for d in train_options() if values.get(d.name) is not None}


def write(run_dir: Path, tcfg: TrainConfig, mcfg: ModelConfig, precision: str | None = None) -> Path:
    """Write the run's ``config.toml`` (atomically) and return its path."""
    import tomli_w

    path = Path(run_dir) / CONFIG
    header = (
        f"# The settings of the charlstm run in this folder. Repeat it with:\n"
        f"#   charlstm train --config {shlex.quote(str(path))} --out NEW_DIR\n"
        f"# Keys are the options of charlstm train; an option given on the command line wins.\n"
    )
    text = header + tomli_w.dumps(settings(tcfg, mcfg, precision))
    atomic_write(path, lambda f: f.write(text), mode="w")
    return path
