"""The ``charlstm`` app itself: one error path for every command, flags without a value
placeholder, the root options, and the arguments several commands share. Commands are declared
in the modules beside this one (see the package's docstring, which also says how errors end).
"""

from __future__ import annotations

import os
import sys
import traceback
from typing import Annotated

import typer
from rich.console import Console
from typer.core import TyperCommand, TyperGroup

import charlstm
from charlstm.errors import UserError

err = Console(stderr=True, highlight=False)


class _FlagsTakeNoValue:
    """Help shows no value placeholder (``<bool>``) after an on/off option: none follows it."""

    def get_params(self, ctx):  # noqa: ANN001, ANN201 - click's signature
        params = super().get_params(ctx)  # type: ignore[misc]
        for param in params:
            if getattr(param, "is_flag", False) and not getattr(param, "count", False):
                param.metavar = ""
        return params


class _Command(_FlagsTakeNoValue, TyperCommand):
    pass


class _Group(_FlagsTakeNoValue, TyperGroup):
    """Runs the app with one error path for every command (see the module docstring)."""

    def main(self, args=None, prog_name=None, complete_var=None, standalone_mode=True, **extra):  # type: ignore[override]
        argv = list(sys.argv[1:] if args is None else args)
        try:
            rv = super().main(args=argv, prog_name=prog_name, complete_var=complete_var, standalone_mode=False, **extra)
            code = rv if isinstance(rv, int) else 0
        except UserError as e:  # under torchrun every process meets the same mistake: the main one says it
            code = _fail(str(e), 2) if os.environ.get("RANK", "0") == "0" else 2
        except typer.TyperException as e:
            if type(e).__name__ == "NoArgsIsHelpError":  # the help was printed; nothing is wrong
                code = getattr(e, "exit_code", 2)
            else:
                code = _fail(e.format_message() + " (see --help)", getattr(e, "exit_code", 2))
        except (KeyboardInterrupt, typer.Abort):
            code = _fail("interrupted", 130)
        except Exception as e:  # an internal fault, not the user's
            if "--debug" in argv:
                traceback.print_exc()
            code = _fail(f"internal error: {type(e).__name__}: {e} (run again with --debug for the traceback)", 1)
        if standalone_mode:
            sys.exit(code)
        return code


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    return code


app = typer.Typer(
    cls=_Group,
    rich_markup_mode="rich",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="Train a character-level LSTM (one layer by default, stacked with --layers N) on any text and generate"
    " text in its style.",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"charlstm {charlstm.__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool, typer.Option("--version", callback=_version, is_eager=True, help="Show the version and exit.")
    ] = False,
    debug: Annotated[bool, typer.Option("--debug", help="Show tracebacks of internal errors.")] = False,
) -> None:
    """charlstm: char-rnn for today."""


# Options shared by several commands.
CheckpointArg = Annotated[str, typer.Argument(help="A checkpoint file, or a run directory (meaning its best.pt).")]
JsonFlag = Annotated[bool, typer.Option("--json", help="Print one JSON object instead of a table.")]
