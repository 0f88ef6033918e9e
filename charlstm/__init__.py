"""charlstm: train a stacked character-level LSTM on any text and sample from it."""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("charlstm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from charlstm.errors import UserError

__all__ = ["UserError", "__version__"]
