"""Serving from Python: ``serve`` (what ``charlstm serve`` runs) and ``serve_app`` (the ASGI app to
mount in your own), with the check that the serve extra is installed."""

from __future__ import annotations

import dataclasses
import functools
import importlib.util
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from charlstm.config import ServeConfig
from charlstm.errors import UserError
from charlstm.options import declared
from charlstm.sampling.draw import compile_kernels

SERVE_EXTRA = "pip install 'charlstm[serve]'"


def check_serve_extra() -> None:
    """Raise ``UserError`` with one line saying how to install what serving needs, if it is missing."""
    _serving()


def _serving() -> Any:
    """The serving package, or one line saying how to install what it needs."""
    needed = ("starlette", "uvicorn", "httptools", "prometheus_client")  # httptools: serving/connections.py
    missing = [name for name in needed if importlib.util.find_spec(name) is None]
    if missing:
        raise UserError(f"serving needs the serve extra ({missing[0]} is not installed): {SERVE_EXTRA}")
    from charlstm.serving import server

    return server


def _serve_config(options: dict[str, Any]) -> ServeConfig:
    from charlstm.api import _refuse_unknown

    _refuse_unknown(options, {d.name for d in declared(ServeConfig)}, "serve")
    if options.get("api_key") is None and os.environ.get("CHARLSTM_API_KEY"):
        options = {**options, "api_key": os.environ["CHARLSTM_API_KEY"]}
    return ServeConfig(**options)


def _service(server: Any, checkpoint: str | Path, config: ServeConfig) -> Any:
    compile_kernels()
    from charlstm.api import load

    model = load(checkpoint)
    return server.make_service(checkpoint, model.checkpoint, model.module, config)


def serve_app(checkpoint: str | Path, **options: Any) -> Any:
    """The ASGI app of ``charlstm serve`` for a checkpoint, to mount in your own application
    (Starlette's ``Mount("/charlstm", app)``, FastAPI's ``app.mount``) or run with any ASGI server.
    ``options`` are those of ``charlstm serve`` but host and port (``api_key``, ``max_streams``, ...)."""
    given = sorted({"host", "port"} & options.keys())
    if given:
        raise UserError(f"serve_app takes no {given[0]!r}: the ASGI server that runs the app listens")
    server = _serving()
    service = _service(server, checkpoint, _serve_config(options))
    from charlstm.serving.app import build_app

    return build_app(service)


def serve(
    checkpoint: str | Path, *, on_start: Callable[[str, dict[str, Any]], None] | None = None, **options: Any
) -> None:
    """Serve a checkpoint over OpenAI's completions API until SIGTERM or Ctrl-C: ``charlstm serve``.

    ``options`` are the command's (``host``, ``port``, ``api_key``, ``max_streams``, ...);
    ``CHARLSTM_API_KEY`` is the key when none is given. ``on_start(url, card)`` is called once
    the server listens, with the model's facts.
    """
    server, config = _serving(), _serve_config(options)
    with server.bind(config.host, config.port) as sock:  # first: a port in use is said before the model loads
        service = _service(server, checkpoint, config)
        card = {**dataclasses.asdict(service.card), "key_required": service.config.api_key is not None}
        ready = None if on_start is None else functools.partial(on_start, server.url_of(sock), card)
        server.serve_forever(service, sock, ready)
