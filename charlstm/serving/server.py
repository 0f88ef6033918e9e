"""Running the app: a model's service and its app, and uvicorn on a socket bound first (so the
start line can say the port, even when any free one was asked for).

SIGTERM or Ctrl-C: uvicorn stops accepting connections; the completions in flight get
``DRAIN_SECONDS`` to finish, then the engine ends the rest (each stream's last event says why)
and the process exits 0.
"""

from __future__ import annotations

import os
import socket
import threading
from pathlib import Path

import uvicorn

from charlstm.config import ServeConfig
from charlstm.net.model import CharLSTM
from charlstm.sampling.stepper import Stepper, resolve_precision
from charlstm.serving.app import ModelCard, Service, build_app
from charlstm.serving.engine import Engine
from charlstm.serving.metrics import Metrics
from charlstm.store.checkpoint import Checkpoint

DRAIN_SECONDS = 2.0  # what a completion in flight gets to finish once the server is told to stop
KEEP_ALIVE_SECONDS = 5  # an idle connection is closed after this


def run_name(path: str | os.PathLike[str], checkpoint: Checkpoint) -> str:
    """The model's id: its run directory's name (or the file's name without its suffix)."""
    given = Path(path)
    if given.is_dir():
        return given.resolve().name
    if checkpoint.path.name in ("best.pt", "last.pt"):
        return checkpoint.path.resolve().parent.name
    return checkpoint.path.stem


def model_card(model_id: str, checkpoint: Checkpoint, module: CharLSTM, precision: str) -> ModelCard:
    facts = checkpoint.describe()
    cfg = checkpoint.model_config
    corpus = (facts.get("corpus") or {}).get("path") or "unknown corpus"
    created = int(checkpoint.path.stat().st_mtime) if checkpoint.path.exists() else 0
    return ModelCard(
        model_id, Path(corpus).name, cfg.cell, cfg.layers, cfg.hidden, module.num_params(), cfg.vocab_size,
        bool(facts.get("byte_fallback")), facts.get("val_loss"), precision, created,
    )  # fmt: skip


def make_service(
    path: str | os.PathLike[str], checkpoint: Checkpoint, module: CharLSTM, config: ServeConfig
) -> Service:
    """The engine over a loaded model, with its card and metrics (the engine starts with the app)."""
    precision = resolve_precision(config.precision, checkpoint.progress.precision)
    stepper = Stepper(module, precision)
    metrics = Metrics()
    engine = Engine(stepper, checkpoint.vocab, checkpoint.warm_state(), config.max_streams, config.max_queue, metrics)
    engine.warm_up()
    return Service(engine, model_card(run_name(path, checkpoint), checkpoint, module, precision), config, metrics)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host`` (IPv4 or IPv6) and ``port`` (0: any free one)."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    return socket.create_server((host.strip("[]"), port), family=family, backlog=2048)


def url_of(sock: socket.socket) -> str:
    host, port = sock.getsockname()[:2]
    return f"http://[{host}]:{port}" if ":" in host else f"http://{host}:{port}"


class _Server(uvicorn.Server):
    """uvicorn's server, which after a signal exits 0 rather than raising the signal again, and
    gives the completions in flight a few seconds before the engine ends them."""

    def __init__(self, config: uvicorn.Config, service: Service):
        super().__init__(config)
        self.service = service

    def handle_exit(self, sig: int, frame: object) -> None:  # type: ignore[override]
        first = not self.should_exit
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        self._captured_signals.clear()  # handled: the process ends normally
        if first:
            timer = threading.Timer(DRAIN_SECONDS, self.service.engine.close)
            timer.daemon = True
            timer.start()


def serve_forever(service: Service, sock: socket.socket, log_level: str = "info") -> None:
    """Serve until SIGTERM or Ctrl-C (or the ASGI server otherwise stops)."""
    config = uvicorn.Config(
        build_app(service),
        log_level=log_level,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(DRAIN_SECONDS + 3),
    )
    _Server(config, service).run(sockets=[sock])
