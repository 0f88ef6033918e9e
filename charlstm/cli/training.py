"""``charlstm train``: the options of a training run, and the live view of it."""

import signal
from typing import Annotated, Any

import typer

from charlstm.cli.app import _Command, app, err
from charlstm.cli.options import declares, given_only
from charlstm.cli.train_view import train_view
from charlstm.config import train_options
from charlstm.options import Panel


def _read_config(ctx: typer.Context, path: str | None) -> str | None:
    """``--config FILE``, read before every other option: its values become their defaults, so that
    an option given on the command line wins over the file."""
    if path is not None:
        from charlstm.store import configfile

        ctx.default_map = {**(ctx.default_map or {}), **configfile.read_options(path)}
    return path


@app.command(cls=_Command)
@declares(given_only(d) for d in train_options())
def train(
    ctx: typer.Context,
    *,
    config: Annotated[
        str | None,
        typer.Option(
            help="A TOML file of training options (max-time = 120, hidden = 256, ...), such as a run "
            "directory's config.toml; options given here win over it. [dim]\\[default: none][/dim]",
            rich_help_panel=Panel.DATA.value,
            is_eager=True,
            callback=_read_config,
        ),
    ] = None,
    **options: Any,
) -> None:
    """Train a model; progress is shown live, checkpoints go to the run directory."""
    from charlstm import api

    given = {name: value for name, value in options.items() if value is not None}
    options = {**(ctx.default_map or {}), **given}  # and options of the file that this command does not declare
    with train_view(err) as view:
        # this process is there to train: glibc may keep freed memory for the next step (device.py)
        result = api.train(**options, on_event=view.on_event, on_reading=view.reading, keep_freed_memory=True)
    if result.stopped_by == "signal":  # the view has shown the resume command
        raise typer.Exit(130 if result.signal == signal.SIGINT else 143)
