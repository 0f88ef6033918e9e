"""The ``charlstm`` command line, and the only code that imports typer or rich or prints.

``app.py`` is the app and its one error path: user mistakes (``UserError`` and bad option
values) become one ``error: ...`` line on stderr and exit code 2; Ctrl-C exits 130; anything
else is an internal fault: exit 1, with the traceback only under ``--debug``. The commands are
declared in ``training.py`` (train), ``models.py`` (sample, eval, info, export) and
``serving.py`` (serve), ``insight.py`` (explain, runs, plot); ``render.py`` draws: the training view, bars, tables.
"""

# isort: off
# Each module registers its commands when imported: this order is the order of --help.
from charlstm.cli import training, models, serving, insight  # noqa: F401

# isort: on
from charlstm.cli.app import app


def main() -> None:
    """Console-script entry point."""
    app()
