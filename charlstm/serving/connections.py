"""The connections uvicorn serves, with the bounds its own HTTP protocol leaves out.

uvicorn (0.55, httptools) holds a connection that never sends a complete request head for ever:
its keep-alive timer starts only after a first response, and nothing bounds how many connections
there are. :class:`Connection` adds both:

- a connection must send a complete request head within ``header_timeout`` seconds of opening,
  and again of each response's end; else it is closed. (A slow body is the app's: 408 after
  ``BODY_SECONDS``.)
- past ``max_connections`` open connections a new one is refused at once: a 503 in OpenAI's
  error shape, then the connection is closed.

It also answers an HTTP/1.0 client without ``Transfer-Encoding: chunked``, which HTTP/1.0 does
not have (RFC 9112 section 6.1; uvicorn chunks every response that has no length): such a
response (a stream of events) is sent as it comes, and its end is the connection's close.
"""

from __future__ import annotations

import asyncio
import json
from typing import Any

from charlstm.errors import UserError

try:  # uvicorn[standard] brings httptools; plain uvicorn does not
    from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
except ImportError:
    raise UserError(
        "serving needs the serve extra (httptools is not installed): pip install 'charlstm[serve]'"
    ) from None

REFUSED_LINGER = 1.0  # seconds a refused connection may take to read its 503 and hang up
REFUSED_LINGERING = 64  # refused connections lingering at once; past that, more are reset without the 503
OTHER_FILES = 64  # files the process holds beside its connections (measured: 14 once serving)


def refusal(max_connections: int) -> bytes:
    """The whole answer to a connection past the cap, written before its request is read."""
    error = {"message": f"the server has {max_connections:,} connections open, its most; retry shortly",
             "type": "server_error", "param": None, "code": "too_many_connections"}  # fmt: skip
    body = json.dumps({"error": error}).encode()
    head = ("HTTP/1.1 503 Service Unavailable\r\ncontent-type: application/json\r\nretry-after: 1\r\n"
            f"connection: close\r\ncontent-length: {len(body)}\r\n\r\n")  # fmt: skip
    return head.encode() + body


def allow_open_files(max_connections: int) -> None:
    """Raise this process's limit on open files (``ulimit -n``, often 1,024) to what
    ``max_connections`` needs, as far as the hard limit allows; past that, a ``UserError``. A
    server out of files cannot accept a connection at all, not even to refuse it."""
    try:
        import resource
    except ImportError:  # not on Windows, whose limit is not a count of sockets
        return
    needed = max_connections + REFUSED_LINGERING + OTHER_FILES
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft == resource.RLIM_INFINITY or soft >= needed:
        return
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise UserError(
            f"--max-connections {max_connections:,} needs {needed:,} open files, and this process may open"
            f" {hard:,} (ulimit -Hn); lower --max-connections to {max(1, hard - REFUSED_LINGERING - OTHER_FILES):,}"
        )
    resource.setrlimit(resource.RLIMIT_NOFILE, (needed, hard))


def connection_class(header_timeout: float, max_connections: int) -> type[Connection]:
    """The protocol uvicorn runs for each connection (``uvicorn.Config(http=...)``), with these bounds."""
    bounds = {"header_timeout": header_timeout, "max_connections": max_connections, "refused": set()}
    return type("BoundedConnection", (Connection,), bounds)


class Connection(HttpToolsProtocol):
    """uvicorn's httptools protocol with a deadline for each request head, a cap on connections,
    and HTTP/1.0 streams sent without chunks. Made for a server by :func:`connection_class`."""

    header_timeout: float
    max_connections: int
    refused: set[asyncio.Transport]  # refused connections not yet closed

    def __init__(self, *args: Any, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.head_timer: asyncio.TimerHandle | None = None
        self.turned_away = False

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        if len(self.connections) >= self.max_connections:
            self._refuse(transport)
            return
        super().connection_made(transport)
        self._await_head()

    def _refuse(self, transport: asyncio.Transport) -> None:
        """Answer 503 at once. Closing with the client's request unread would send a reset, which
        may destroy the 503 before the client reads it; so the write side is closed first, what the
        client sends is dropped, and the socket closed when it hangs up or after ``REFUSED_LINGER``."""
        self.turned_away, self.transport = True, transport
        if len(self.refused) >= REFUSED_LINGERING or not transport.can_write_eof():
            transport.abort()  # a flood of refused connections: no time to linger for each
            return
        self.refused.add(transport)
        transport.write(refusal(self.max_connections))
        transport.write_eof()
        self.loop.call_later(REFUSED_LINGER, transport.close)

    def data_received(self, data: bytes) -> None:
        if not self.turned_away:
            super().data_received(data)

    def eof_received(self) -> bool | None:
        if self.turned_away:
            self.transport.close()
        return None

    def connection_lost(self, exc: Exception | None) -> None:
        if self.turned_away:
            self.refused.discard(self.transport)
            return
        self._stop_waiting()
        super().connection_lost(exc)

    def _await_head(self) -> None:
        self._stop_waiting()
        self.head_timer = self.loop.call_later(self.header_timeout, self._head_late)

    def _stop_waiting(self) -> None:
        if self.head_timer is not None:
            self.head_timer.cancel()
            self.head_timer = None

    def _head_late(self) -> None:
        self.head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def on_headers_complete(self) -> None:
        self._stop_waiting()
        super().on_headers_complete()
        # uvicorn builds the cycle inside the method above: giving it our subclass (which adds no
        # state, only a send) is the way to change its send without copying uvicorn's method.
        if type(self.cycle) is RequestResponseCycle:
            self.cycle.__class__ = _Cycle

    def on_response_complete(self) -> None:
        super().on_response_complete()
        if not self.transport.is_closing() and not self.pipeline and self.cycle.response_complete:
            self._await_head()  # the next request's head, on a connection kept alive


class _Cycle(RequestResponseCycle):
    """One request and its response: uvicorn's, but for an HTTP/1.0 client a response without a
    length is sent as it is, not in chunks, and the connection's close marks its end."""

    close_delimited = False

    async def send(self, message: Any) -> None:
        if message["type"] == "http.response.start" and self._unchunked(message):
            self.close_delimited, self.keep_alive = True, False  # connection: close is added
            self.chunked_encoding = False  # set, so uvicorn adds no transfer-encoding
        elif message["type"] == "http.response.body" and self.close_delimited:
            # uvicorn checks the bytes sent against a content-length; this body's is its own.
            self.expected_content_length = len(message.get("body", b""))
        await super().send(message)

    def _unchunked(self, message: Any) -> bool:
        if self.scope["http_version"] != "1.0" or self.scope["method"] == "HEAD":
            return False
        names = {name.lower() for name, _ in message.get("headers", [])}
        return b"content-length" not in names and message["status"] not in (204, 304)
