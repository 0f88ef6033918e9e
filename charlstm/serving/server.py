"""Running the app: a model's service and its app, and uvicorn on a socket bound first (so the
start line can say the port, even when any free one was asked for).

The service opens (its engine started, a first completion run in-process) before uvicorn
starts, so a model that cannot generate is one error, and the app's lifespan closes it.
SIGTERM or Ctrl-C: uvicorn stops accepting connections; the completions in flight get
``DRAIN_SECONDS`` to finish, then the engine ends the rest (each stream's last event says why)
and the process exits 0.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import threading
from collections.abc import Callable, Iterator

import uvicorn

from charlstm.config import ServeConfig
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM
from charlstm.sampling.slots import Slots
from charlstm.sampling.stepper import Stepper, resolve_precision
from charlstm.serving.app import build_app
from charlstm.serving.connections import allow_open_files, connection_class
from charlstm.serving.engine import Closed, Engine
from charlstm.serving.metrics import Metrics
from charlstm.serving.service import Service
from charlstm.store.card import model_card, run_name
from charlstm.store.checkpoint import Checkpoint

DRAIN_SECONDS = 2.0  # what a completion in flight gets to finish once the server is told to stop
KEEP_ALIVE_SECONDS = 5  # an idle connection is closed after this
SIGNALS = (signal.SIGINT, signal.SIGTERM)


def make_service(
    path: str | os.PathLike[str], checkpoint: Checkpoint, module: CharLSTM, config: ServeConfig
) -> Service:
    """The engine over a loaded model, with its card and metrics (not yet started: ``Service.open``)."""
    precision = resolve_precision(config.precision, checkpoint.progress.precision)
    stepper = Stepper(module, precision)
    metrics = Metrics()
    slots = Slots(stepper, config.max_streams)
    engine = Engine(slots, checkpoint.vocab, checkpoint.warm_state(), config.max_queue, metrics)
    card = model_card(run_name(path, checkpoint), checkpoint, precision)
    return Service(engine, card, config, metrics, module)


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
    """uvicorn's server, which after a signal exits 0 rather than raising the signal again, gives
    the completions in flight a few seconds before the engine ends them, and says when it is
    ready."""

    def __init__(self, config: uvicorn.Config, service: Service, on_ready: Callable[[], None] | None):
        super().__init__(config)
        self.service, self.on_ready = service, on_ready

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        """SIGINT and SIGTERM stop the server, and are handled: the process ends normally."""
        if threading.current_thread() is not threading.main_thread():  # signals reach the main thread only
            yield
            return
        before = {sig: signal.signal(sig, self.handle_exit) for sig in SIGNALS}
        try:
            yield
        finally:
            for sig, handler in before.items():
                signal.signal(sig, handler)

    def handle_exit(self, sig: int, frame: object) -> None:  # type: ignore[override]
        first = not self.should_exit
        super().handle_exit(sig, frame)  # type: ignore[arg-type]
        if first:
            self.service.stopping = True  # a request still sending its body is answered 503 at once
            timer = threading.Timer(DRAIN_SECONDS, self.service.close)
            timer.daemon = True
            timer.start()

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit and self.on_ready is not None:  # off the event loop
            threading.Thread(target=self.on_ready, name="charlstm-ready", daemon=True).start()


def serve_forever(service: Service, sock: socket.socket, on_ready: Callable[[], None] | None = None) -> None:
    """Open the service (a model that cannot generate raises ``UserError``), then serve until
    SIGTERM or Ctrl-C (or the ASGI server otherwise stops); ``on_ready`` is called once the
    server listens."""
    try:
        service.open()
    except (RuntimeError, Closed) as e:
        service.close()
        raise UserError(f"the model cannot generate here: {e}{_cause(e)}") from None
    limits = service.config
    allow_open_files(limits.max_connections)
    config = uvicorn.Config(
        build_app(service),
        http=connection_class(limits.header_timeout, limits.max_connections),
        access_log=not limits.quiet,
        timeout_keep_alive=KEEP_ALIVE_SECONDS,
        timeout_graceful_shutdown=int(DRAIN_SECONDS + 3),
    )
    _Server(config, service, on_ready).run(sockets=[sock])


def _cause(error: BaseException) -> str:
    """What an error was raised from, as " (Type: its first line)"; empty for nothing."""
    cause = error.__cause__
    return f" ({type(cause).__name__}: {str(cause).splitlines()[0] if str(cause) else ''})" if cause else ""
