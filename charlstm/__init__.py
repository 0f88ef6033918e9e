"""charlstm: train a character-level LSTM (one layer, or stacked with ``layers=N``) on any text and sample from it.

The Python API (``load``, ``train``, ``Model``) lives in :mod:`charlstm.api`; it is imported on
first use, so that ``charlstm --help`` does not wait for torch.
"""

from importlib.metadata import PackageNotFoundError, version
from typing import Any

try:
    __version__ = version("charlstm")
except PackageNotFoundError:  # running from a source tree that was never installed
    __version__ = "0.0.0+unknown"

from charlstm.errors import UserError

_API = ("Model", "load", "serve", "serve_app", "train")
__all__ = ["Model", "UserError", "__version__", "load", "serve", "serve_app", "train"]


def __getattr__(name: str) -> Any:
    """``charlstm.load`` and friends, imported from ``charlstm.api`` the first time they are used."""
    if name in _API:
        from charlstm import api

        value = getattr(api, name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'charlstm' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_API})
