"""The commands that look at runs and models: ``explain`` (what the cells follow, as an HTML
page), ``runs`` (a table of run directories) and ``plot`` (their loss curves). Declared as in
``cli.py``: options, one library call, rendering.
"""

from __future__ import annotations

import json
import shutil
import sys
import time
from typing import Annotated

import typer
from rich.console import Console

from charlstm.cli import render
from charlstm.cli.app import CheckpointArg, _Command, app, err
from charlstm.config import EXPLAIN_CELLS, ExplainConfig


@app.command(cls=_Command)
def explain(
    checkpoint: CheckpointArg,
    text: Annotated[str, typer.Option(help="Text file to read through the model.")],
    out: Annotated[str, typer.Option(help="The HTML page to write (one self-contained file).")],
    chars: Annotated[int, typer.Option(help="Read and show the first N characters of the text.")] = ExplainConfig.chars,
    cells: Annotated[
        int | None,
        typer.Option(
            help="Cells to show: the one that follows each text feature best, then those whose values vary most."
            f" [dim]\\[default: {EXPLAIN_CELLS}][/dim]"
        ),
    ] = None,
    cell_ids: Annotated[
        str | None,
        typer.Option(
            help="Show these cells instead, comma-separated, numbered over the layers (with --hidden H, the second"
            " layer's first unit is cell H)."
            " [dim]\\[default: found automatically][/dim]"
        ),
    ] = None,
    value: Annotated[
        str | None,
        typer.Option(
            help="What colours a character: cell (tanh of the cell state after it) or hidden (the hidden output)."
            " [dim]\\[default: cell; hidden for a GRU][/dim]"
        ),
    ] = None,
    encoding: Annotated[str, typer.Option(help="Text encoding of the text file.")] = ExplainConfig.encoding,
) -> None:
    """Colour a text by the model's cells, find those that follow its features; write one HTML page."""
    from charlstm import api

    config = ExplainConfig(text, out, chars, cells, cell_ids, value, encoding)
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
        Console().print(render.runs_table(found, folder, now))


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
) -> None:
    """Training and validation loss, and the learning rate, of runs from their metrics.jsonl."""
    from charlstm.insight import plots

    if out is not None:
        path = plots.save_chart(run_dirs, out, x)
        err.print(f"wrote {path}")
        return
    columns, lines = shutil.get_terminal_size()
    chart = plots.text_chart(run_dirs, x, width=columns, height=min(max(lines - 2, 15), 40), color=sys.stdout.isatty())
    typer.echo(chart)
