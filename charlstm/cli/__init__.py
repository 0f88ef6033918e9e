"""The ``charlstm`` command line: the only code that imports typer or rich, or prints."""

from charlstm.cli.models import main

__all__ = ["main"]
