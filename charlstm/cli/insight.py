"""The commands that look at runs and models: ``explain`` (what the cells follow, as an HTML
page), ``runs`` (a table of run directories) and ``plot`` (their loss curves). Declared as in
``models.py``: options, one library call, rendering.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Annotated, Any

import typer
from rich.console import Console

from charlstm.cli import render
from charlstm.cli.app import CheckpointArg, _Command, app, err
from charlstm.cli.options import declares, with_default
from charlstm.config import ExplainConfig
from charlstm.options import declared


@app.command(cls=_Command)
@declares(with_default(d) for d in declared(ExplainConfig))
def explain(checkpoint: CheckpointArg, **options: Any) -> None:
    """Colour a text by the model's cells, find those that follow its features; write one HTML page."""
    from charlstm import api

    config = ExplainConfig(**options)
    report = api.explain(checkpoint, config)
    Console().print(render.explain_table(report))
    err.print(
        f"wrote {report.out} ({report.page_bytes:,} bytes, {report.chars:,} characters, {len(report.cells)} cells)"
        f" in {report.seconds:.1f} s; open it in a browser"
    )


@app.command(name="runs", cls=_Command)
def list_runs(
    folder: Annotated[
        str, typer.Argument(help="A folder of run directories (searched at any depth), or one run directory.")
    ] = "checkpoints",
    sort: Annotated[
        str, typer.Option(help="best (lowest best validation loss first) or time (latest change first).")
    ] = "best",
    as_json: Annotated[bool, typer.Option("--json", help="Print a JSON list of objects instead of a table.")] = False,
) -> None:
    """One row per run: corpus, model, steps, time trained, best and last validation loss, state."""
    from charlstm.insight import runs

    now = time.time()
    found = runs.list_runs(folder, sort, now)
    if as_json:
        typer.echo(json.dumps([run.to_dict() for run in found]))
    elif not found:
        err.print(f"no run directories in {folder}")
    else:
        console = Console()
        console.print(render.runs_table(found, folder, now, console.width))


@app.command(cls=_Command)
def plot(
    run_dirs: Annotated[
        list[str], typer.Argument(help="One or more run directories, drawn together.", metavar="RUN_DIR")
    ],
    out: Annotated[
        str | None,
        typer.Option(
            help="Write the chart to this .png, .svg or .pdf file (matplotlib). "
            "[dim]\\[default: a chart in the terminal (plotext)][/dim]"
        ),
    ] = None,
    x: Annotated[str, typer.Option(help="The horizontal axis: step, time (seconds trained) or epoch.")] = "step",
    overwrite: Annotated[
        bool, typer.Option("--overwrite", help="Replace the chart at --out if it already exists.")
    ] = False,
) -> None:
    """Training and validation loss, and the learning rate, of runs from their metrics.jsonl."""
    from charlstm.insight import plots

    if out is not None:
        path = plots.save_chart(run_dirs, out, x, overwrite)
        err.print(f"wrote {path}")
        return
    columns, lines = shutil.get_terminal_size()
    chart = plots.text_chart(run_dirs, x, width=columns, height=min(max(lines - 2, 15), 40), color=sys.stdout.isatty())
    typer.echo(chart)
