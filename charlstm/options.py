"""The declaration of an option, held in its config field's metadata, and what is derived from it.

Each option is declared once, on its field in ``config/`` (``training.py``, ``use.py``): its help,
the panel of ``--help`` it sits in, the default as help shows it where the field's own is not what applies, whether a
resumed run may change it, and whether a preset sizes it. The command line's options, the
config-file reader, the Python API's keyword check, the presets' list and the docs' options
table are all built from these declarations (:func:`declared`), and :func:`split` is the one
place that shares a dict of options out between the configs.
"""

from __future__ import annotations

import dataclasses
import functools
import types
import typing
from collections.abc import Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

OPTION = "charlstm.option"  # the metadata key of a field's declaration


class Panel(str, Enum):
    """The groups of ``charlstm train --help``, in the order shown."""

    DATA = "Data"
    MODEL = "Model"
    OPTIM = "Optimization"
    BUDGET = "Budget"
    OUTPUT = "Output"
    HW = "Hardware"


@dataclass(frozen=True)
class Option:
    """How one option is described and treated."""

    help: str  # may hold "{default}": the field's default, written in
    panel: Panel | None = None
    shown: str | None = None  # the default as --help shows it, where the field's own is not what applies
    resumable: bool = False  # a resumed run may change it (the budget, the cadence, the device)
    sized: bool = False  # a preset sets it when the user leaves it unset
    negatable: bool = False  # an on/off switch given as --x/--no-x (otherwise a switch is --x alone)
    from_base: bool = False  # the model's shape: a fine-tuning run (--init-from) takes it from its base
    fine_tune: Any = None  # its default in a run started with --init-from, as measured (docs/sweep.md, Fine-tuning)
    far_text: bool = False  # with --init-from, a run from scratch's value on a text far from the base's (finetune.py)


def opt(default: Any, help: str, panel: Panel | None = None, **properties: Any) -> Any:  # noqa: A002
    """A config field declared as an option (``properties``: those of :class:`Option`); a
    ``default`` of ``...`` makes it required."""
    metadata = {OPTION: Option(help, panel, **properties)}
    if default is ...:
        return dataclasses.field(metadata=metadata)
    return dataclasses.field(default=default, metadata=metadata)


def option(name: str) -> str:
    """The command-line spelling of a config field: ``seq_len`` -> ``--seq-len``."""
    return "--" + name.replace("_", "-")


@dataclass(frozen=True)
class Declared:
    """An option as every front end sees it: its config field, its declaration and its value's type."""

    name: str
    config: type
    option: Option
    default: Any  # dataclasses.MISSING for a required option
    kind: type  # int, float, str or bool: the type of a value as given, None left out
    optional: bool  # whether None is a value (meaning: not given, or none)

    @property
    def flag(self) -> str:
        """The command-line spelling: ``seq_len`` -> ``--seq-len``."""
        return option(self.name)

    @property
    def help(self) -> str:
        return self.option.help.format(default=self.default)

    @property
    def fine_tuned(self) -> Any:
        """Its default in a run started with --init-from where that differs from its own; else None."""
        return None if self.option.fine_tune in (None, self.default) else self.option.fine_tune


@functools.cache
def declared(*configs: type) -> tuple[Declared, ...]:
    """The options of ``configs``' fields that declare one, config by config in field order."""
    found = []
    for config in configs:
        hints = typing.get_type_hints(config)
        for f in dataclasses.fields(config):
            if OPTION in f.metadata:
                kind, optional = _kind(hints[f.name])
                found.append(Declared(f.name, config, f.metadata[OPTION], f.default, kind, optional))
    return tuple(found)


def _kind(hint: Any) -> tuple[type, bool]:
    """(``int``, True) for ``int | None``; a tuple is given as text (``3,17,200``)."""
    args = typing.get_args(hint) if isinstance(hint, types.UnionType) or typing.get_origin(hint) is typing.Union else ()
    values = [a for a in args if a is not type(None)] or [hint]
    kind = values[0]
    if typing.get_origin(kind) is tuple:
        kind = str
    return kind, type(None) in args


def by_panel(options: tuple[Declared, ...]) -> tuple[Declared, ...]:
    """The options grouped by panel in the panels' order, each group in declaration order."""
    order = list(Panel)
    return tuple(sorted(options, key=lambda d: order.index(d.option.panel) if d.option.panel else -1))


def split(values: Mapping[str, Any], *configs: type) -> tuple[dict[str, Any], ...]:
    """``values`` shared out between ``configs``: each gets those that name one of its fields
    (a name is a field of one config only). Values that name no field are left out."""
    parts: tuple[dict[str, Any], ...] = tuple({} for _ in configs)
    for name, value in values.items():
        for part, config in zip(parts, configs, strict=True):
            if name in config.__dataclass_fields__:
                part[name] = value
                break
    return parts
