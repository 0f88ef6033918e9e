"""typer options built from the options' declarations (``charlstm.options``): a command's
parameters are its configs' fields, so its ``--help``, the defaults it shows and the values it
passes on all come from the one declaration of each option."""

from __future__ import annotations

import dataclasses
import inspect
from collections.abc import Callable, Iterable
from typing import Annotated, Any, TypeVar

import typer

from charlstm.options import Declared
from charlstm.training import presets

F = TypeVar("F", bound=Callable[..., Any])
KEYWORD = inspect.Parameter.KEYWORD_ONLY


def shown_default(d: Declared) -> str | None:
    """The default ``--help`` shows for an option: its declared words, the presets' values for a
    sized one, or the field's own default, and a fine-tuning run's where it differs; None for none."""
    shown = _own_default(d)
    if d.fine_tuned is not None:
        far = ", as from scratch on a text far from the base's" if d.option.far_text else ""
        return f"{shown}; {d.fine_tuned:g} with --init-from{far}"
    if d.option.from_base:
        return f"{shown}; the base's with --init-from"
    return shown


def _own_default(d: Declared) -> str | None:
    if d.option.shown is not None:
        return d.option.shown
    if d.option.sized:
        return presets.default_text(d.name)
    if d.default is None or d.default is dataclasses.MISSING:
        return None
    if d.kind is bool:
        return "on" if d.default else "off"
    return str(d.default)


def _with_default(help: str, shown: str | None) -> str:  # noqa: A002
    return help + (f" [dim]\\[default: {shown}][/dim]" if shown is not None else "")


def _panel(d: Declared) -> dict[str, Any]:
    return {"rich_help_panel": d.option.panel.value} if d.option.panel is not None else {}


def given_only(d: Declared) -> inspect.Parameter:
    """A parameter that is None unless given, so that the library applies the default (and a
    settings file's value shows through); its help says which default applies."""
    if d.option.negatable:  # --x/--no-x, off unless given: typer shows its own default
        info = typer.Option(f"{d.flag}/--no-{d.flag[2:]}", help=d.help, **_panel(d))
        return inspect.Parameter(
            d.name, inspect.Parameter.KEYWORD_ONLY, default=False, annotation=Annotated[bool, info]
        )
    decls = (d.flag,) if d.kind is bool else ()  # a switch takes no value
    info = typer.Option(*decls, help=_with_default(d.help, shown_default(d)), **_panel(d))
    annotation = Annotated[d.kind | None, info]  # type: ignore[operator]
    return inspect.Parameter(d.name, KEYWORD, default=None, annotation=annotation)


def with_default(d: Declared) -> inspect.Parameter:
    """A parameter whose default is the field's (typer shows it), or the declared words for one
    the library resolves later; a field without a default is a required option."""
    decls = (d.flag,) if d.kind is bool else ()
    help = _with_default(d.help, d.option.shown)  # noqa: A001
    info = typer.Option(*decls, help=help, **_panel(d))
    kind = d.kind | None if d.optional else d.kind  # type: ignore[operator]
    default = inspect.Parameter.empty if d.default is dataclasses.MISSING else d.default
    if isinstance(default, tuple):  # given as text: the config reads "" as the empty tuple
        default = ",".join(map(str, default))
    return inspect.Parameter(d.name, KEYWORD, default=default, annotation=Annotated[kind, info])


def declares(parameters: Iterable[inspect.Parameter], after: tuple[str, ...] = ()) -> Callable[[F], F]:
    """Give a command the ``parameters`` in place of its ``**options``: they follow its own
    parameters, except those named in ``after``, which come last (``--json``)."""

    def attach(command: F) -> F:
        own = [p for p in inspect.signature(command, eval_str=True).parameters.values() if p.kind is not p.VAR_KEYWORD]
        first = [p for p in own if p.name not in after]
        last = [p for p in own if p.name in after]
        ordered = [*first, *parameters, *last]
        positional = [p for p in ordered if p.kind is not p.KEYWORD_ONLY]
        keywords = [p for p in ordered if p.kind is p.KEYWORD_ONLY]
        command.__signature__ = inspect.Signature([*positional, *keywords])  # type: ignore[attr-defined]
        return command

    return attach
