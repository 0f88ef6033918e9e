"""Running the app: a model's service and its app, and uvicorn on a socket bound first (so the
start line can say the port, even when any free one was asked for).

SIGTERM or Ctrl-C: uvicorn stops accepting connections; the completions in flight get
``DRAIN_SECONDS`` to finish, then the engine ends the rest (each stream's last event says why)
and the process exits 0.
"""

from __future__ import annotations

import http.client
import json
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from pathlib import Path

import uvicorn

from charlstm.config import ServeConfig
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM
from charlstm.sampling.slots import Slots
from charlstm.sampling.stepper import Stepper, resolve_precision
from charlstm.serving.app import ModelCard, Service, build_app
from charlstm.serving.connections import allow_open_files, connection_class
from charlstm.serving.engine import Engine
from charlstm.serving.metrics import Metrics
from charlstm.store.checkpoint import Checkpoint

log = logging.getLogger("charlstm.serve")

DRAIN_SECONDS = 2.0  # what a completion in flight gets to finish once the server is told to stop
KEEP_ALIVE_SECONDS = 5  # an idle connection is closed after this
WARM_UP_REQUEST_TOKENS = 8


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
    """The engine over a loaded model (started: its kernels ready), with its card and metrics."""
    precision = resolve_precision(config.precision, checkpoint.progress.precision)
    stepper = Stepper(module, precision)
    metrics = Metrics()
    slots = Slots(stepper, config.max_streams)
    engine = Engine(slots, checkpoint.vocab, checkpoint.warm_state(), config.max_queue, metrics)
    engine.start()
    return Service(engine, model_card(run_name(path, checkpoint), checkpoint, module, precision), config, metrics)


def bind(host: str, port: int) -> socket.socket:
    """A listening socket on ``host`` (IPv4 or IPv6) and ``port`` (0: any free one); a host or
    port that cannot be had is a ``UserError``."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host.strip("[]"), port), family=family, backlog=2048)
    except OSError as e:  # in use, not this machine's, not an address
        raise UserError(
            f"cannot listen on {host} port {port}: {e.strerror or e}; choose another --host or --port"
        ) from None
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)  # accepted sockets inherit it: small writes go at once
    return sock


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
        captured = getattr(self, "_captured_signals", None)  # uvicorn raises them again at its end
        if isinstance(captured, list):
            captured.clear()  # handled: the process ends normally
        if first:
            self.service.stopping = True  # a request still sending its body is answered 503 at once
            timer = threading.Timer(DRAIN_SECONDS, self.service.engine.close)
            timer.daemon = True
            timer.start()


def serve_forever(service: Service, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Serve until SIGTERM or Ctrl-C (or the ASGI server otherwise stops); ``on_ready`` is called
    once the server has answered its own warm-up request (a short streamed completion: the first
    one through a fresh process costs some 0.3 s of set-up that no user should wait for)."""
    limits = service.config
    allow_open_files(limits.max_connections)
    config = uvicorn.Config(
        build_app(service),
        http=connection_class(limits.header_timeout, limits.max_connections),
        access_log=not limits.quiet,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(DRAIN_SECONDS + 3),
    )
    server = _Server(config, service)
    threading.Thread(target=_warm_up, args=(server, sock, on_ready), name="charlstm-warm-up", daemon=True).start()
    server.run(sockets=[sock])


def _warm_up(server: _Server, sock: socket.socket, on_ready: Callable[[], None] | None) -> None:
    while not server.started and not server.should_exit:
        time.sleep(0.01)
    host, port = sock.getsockname()[:2]
    key = server.service.config.api_key
    headers = {"Content-Type": "application/json", **({"Authorization": f"Bearer {key}"} if key else {})}
    body = json.dumps({"prompt": "", "max_tokens": WARM_UP_REQUEST_TOKENS, "stream": True})
    try:
        connection = http.client.HTTPConnection(host, port, timeout=30)
        connection.request("POST", "/v1/completions", body, headers)
        response = connection.getresponse()
        response.read()
        connection.close()
    except (OSError, http.client.HTTPException):  # the server stopped meanwhile: nothing to warm
        return
    if response.status != 200:
        log.error("the warm-up request got %s; the server does not answer completions", response.status)
        server.should_exit = True
        return
    if on_ready is not None and not server.should_exit:
        on_ready()
