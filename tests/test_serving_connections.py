"""Connections to a real ``charlstm serve`` on 127.0.0.1, each bounded in count and time: a head
that never completes is closed within ``--header-timeout``, connections past
``--max-connections`` are refused at once, an HTTP/1.0 stream comes without chunks, and SIGTERM
while a body arrives is a 503, while every well-behaved client goes on being served."""

from __future__ import annotations

import json
import socket
import time

import httpx
import pytest

from tests.serving import Server

HEAD_SECONDS = 2  # --header-timeout in these tests
LATE = 10  # seconds past a bound that a busy machine may add before the server acts
SILENT, UNFINISHED = 200, 50


def address(server: Server) -> tuple[str, int]:
    host, port = server.url.removeprefix("http://").rsplit(":", 1)
    return host, int(port)


def read_all(sock: socket.socket, seconds: float) -> bytes:
    """What ``sock`` receives until the server closes it, or at most ``seconds``."""
    sock.settimeout(seconds)
    data = b""
    try:
        while chunk := sock.recv(65536):
            data += chunk
    except ConnectionResetError:
        pass
    return data


def read_response(sock: socket.socket) -> bytes:
    """One whole response that has a content-length, leaving the connection open."""
    sock.settimeout(30)
    data = b""
    while b"\r\n\r\n" not in data:
        data += sock.recv(65536)
    head, body = data.split(b"\r\n\r\n", 1)
    length = int(next(line for line in head.lower().split(b"\r\n") if line.startswith(b"content-length:"))[15:])
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def closed_within(sock: socket.socket, deadline: float) -> bool:
    """Whether the server closes ``sock`` (with nothing sent) before ``deadline``."""
    sock.settimeout(max(0.01, deadline - time.monotonic()))
    try:
        return sock.recv(1) == b""
    except ConnectionResetError:
        return True
    except TimeoutError:
        return False


def raw_request(server: Server, head: bytes, body: bytes = b"") -> socket.socket:
    sock = socket.create_connection(address(server), timeout=30)
    sock.sendall(head + body)
    return sock


def completion_head(length: int, version: bytes = b"1.1") -> bytes:
    return (b"POST /v1/completions HTTP/" + version + b"\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
            b"Content-Length: " + str(length).encode() + b"\r\n\r\n")  # fmt: skip


def test_silent_and_unfinished_heads_are_closed_in_time_while_others_are_served(shared_run):
    server = Server(shared_run, "--header-timeout", str(HEAD_SECONDS), "--quiet")
    held: list[socket.socket] = []
    try:
        with httpx.Client(base_url=server.url, timeout=30) as http:
            assert http.get("/health").status_code == 200  # a connection kept alive across the flood
            opened = time.monotonic()
            held += [socket.create_connection(address(server), timeout=30) for _ in range(SILENT)]
            for i in range(UNFINISHED):
                held.append(socket.create_connection(address(server), timeout=30))
                held[-1].sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Part: " + b"a" * i)
            r = http.post("/v1/completions", json={"prompt": "KING:", "max_tokens": 20, "seed": 1})
            assert r.status_code == 200 and len(r.json()["choices"][0]["text"]) == 20
            deadline = opened + HEAD_SECONDS + LATE
            still_open = [i for i, sock in enumerate(held) if not closed_within(sock, deadline)]
            assert still_open == [], f"{len(still_open)} of {len(held)} connections still open"
            assert time.monotonic() - opened >= HEAD_SECONDS * 0.9  # none closed before its time
            r = httpx.post(server.url + "/v1/completions", json={"prompt": "KING:", "max_tokens": 5}, timeout=30)
            assert r.status_code == 200  # a new client, after them
        assert server.health()["status"] == "ok"
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0
    assert "Traceback" not in server.output


def test_the_head_deadline_starts_again_after_each_answer(shared_run):
    server = Server(shared_run, "--header-timeout", str(HEAD_SECONDS), "--quiet")
    try:
        sock = raw_request(server, b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        assert read_response(sock).startswith(b"HTTP/1.1 200")
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n")  # a second head, never finished
        started = time.monotonic()
        assert closed_within(sock, started + HEAD_SECONDS + LATE)  # the keep-alive timer stopped at its data
        slow = raw_request(server, b"GET /health HTTP/1.1\r\n")  # a head sent slowly, but within the bound
        time.sleep(HEAD_SECONDS / 2)
        slow.sendall(b"Host: 127.0.0.1\r\nConnection: close\r\n\r\n")
        assert read_all(slow, 30).startswith(b"HTTP/1.1 200")
    finally:
        assert server.stop() == 0


def test_past_the_cap_a_connection_is_refused_at_once_with_a_503(shared_run):
    cap = 8
    server = Server(shared_run, "--max-connections", str(cap), "--quiet")
    held = [socket.create_connection(address(server), timeout=30) for _ in range(cap)]
    try:
        answer, deadline = b"", time.monotonic() + 30
        while not answer and time.monotonic() < deadline:  # until the server has taken the held ones
            probe = socket.create_connection(address(server), timeout=30)
            started = time.monotonic()
            answer = read_all(probe, 1.0)
            took = time.monotonic() - started
            probe.close()
        assert answer.startswith(b"HTTP/1.1 503 ") and b"retry-after: 1" in answer.lower()
        assert took < 1.0  # at once, before any request
        error = json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]
        assert error["code"] == "too_many_connections" and error["type"] == "server_error"
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "KING:", "max_tokens": 5}, timeout=30)
        assert r.status_code == 503 and r.json()["error"]["code"] == "too_many_connections"
        for sock in held:
            sock.close()
        deadline = time.monotonic() + 30
        while (r := httpx.get(server.url + "/health", timeout=30)).status_code == 503 and time.monotonic() < deadline:
            time.sleep(0.05)
        assert r.status_code == 200
        r = httpx.post(server.url + "/v1/completions", json={"prompt": "KING:", "max_tokens": 5}, timeout=30)
        assert r.status_code == 200
    finally:
        for sock in held:
            sock.close()
        assert server.stop() == 0
    assert "Traceback" not in server.output


@pytest.fixture(scope="module")
def server(shared_run):
    s = Server(shared_run)
    yield s
    assert s.stop() == 0


def test_an_http_1_0_stream_comes_unchunked_and_ends_with_the_close(server):
    ask = {"prompt": "KING:", "max_tokens": 60, "seed": 7, "temperature": 1.0}
    body = json.dumps({**ask, "stream": True}).encode()
    answer = read_all(raw_request(server, completion_head(len(body), b"1.0"), body), 30)
    head, events = answer.split(b"\r\n\r\n", 1)
    assert head.startswith(b"HTTP/1.1 200") and b"text/event-stream" in head
    assert b"transfer-encoding" not in head.lower() and b"connection: close" in head.lower()
    assert events.startswith(b"data: {") and events.endswith(b"data: [DONE]\n\n")
    chunks = [json.loads(e[6:]) for e in events.decode().split("\n\n") if e.startswith("data: {")]
    text = "".join(c["choices"][0]["text"] for c in chunks)
    whole = httpx.post(server.url + "/v1/completions", json=ask, timeout=30).json()
    assert text == whole["choices"][0]["text"] and len(text) == 60
    plain = json.dumps(ask).encode()  # an answer with a length is sent as before
    answer = read_all(raw_request(server, completion_head(len(plain), b"1.0"), plain), 30)
    head, content = answer.split(b"\r\n\r\n", 1)
    assert b"content-length: " + str(len(content)).encode() in head.lower()
    assert json.loads(content)["choices"][0]["text"] == text
    assert "Traceback" not in server.output


def test_sigterm_while_a_body_arrives_is_a_503_and_no_error(shared_run):
    server = Server(shared_run)
    sock = raw_request(server, completion_head(100), b'{"prompt": ')  # 11 of 100 bytes
    time.sleep(0.3)  # the server is reading the body
    server.proc.terminate()
    answer = read_all(sock, 30)
    assert answer.startswith(b"HTTP/1.1 503 "), answer
    assert json.loads(answer.split(b"\r\n\r\n", 1)[1])["error"]["code"] == "shutting_down"
    assert server.proc.wait(30) == 0
    assert "Exception in ASGI application" not in server.output and "Traceback" not in server.output
    assert "CancelledError" not in server.output and "timeout graceful shutdown exceeded" not in server.output


SECONDS = "a number of seconds greater than 0"


@pytest.mark.parametrize(
    ("flag", "value", "message"),
    [
        ("--header-timeout", "0", f"error: --header-timeout 0.0 is not valid, expected {SECONDS}"),
        ("--header-timeout", "nan", f"error: --header-timeout nan is not valid, expected {SECONDS}"),
        ("--max-connections", "0", "error: --max-connections 0 is not valid, expected a whole number greater than 0"),
    ],
)
def test_bad_connection_bounds_are_one_line_and_exit_2(shared_run, flag, value, message):
    from typer.testing import CliRunner

    from charlstm.cli import app

    result = CliRunner().invoke(app, ["serve", str(shared_run), "--port", "0", flag, value])
    assert result.exit_code == 2 and result.output.splitlines() == [message]


def test_without_httptools_serve_says_how_to_install_it(shared_run, monkeypatch):
    import sys

    from typer.testing import CliRunner

    import charlstm.serving
    from charlstm.cli import app

    monkeypatch.setitem(sys.modules, "httptools", None)  # import httptools fails
    for name in ("uvicorn.protocols.http.httptools_impl", "charlstm.serving.connections", "charlstm.serving.server"):
        monkeypatch.delitem(sys.modules, name, raising=False)  # imported afresh, then put back
    for name in ("connections", "server"):  # else `from charlstm.serving import server` finds the attribute
        monkeypatch.delattr(charlstm.serving, name, raising=False)
    result = CliRunner().invoke(app, ["serve", str(shared_run)])
    assert result.exit_code == 2
    assert result.output.splitlines() == [
        "error: serving needs the serve extra (httptools is not installed): pip install 'charlstm[serve]'"
    ]


def test_the_open_files_limit_is_raised_to_what_the_cap_needs_or_the_cap_refused(monkeypatch):
    import resource

    from charlstm.errors import UserError
    from charlstm.serving import connections

    limits = {"now": (1024, 4096)}
    monkeypatch.setattr(resource, "getrlimit", lambda kind: limits["now"])
    monkeypatch.setattr(resource, "setrlimit", lambda kind, value: limits.update(now=value))
    connections.allow_open_files(512)  # fits in 1,024
    assert limits["now"] == (1024, 4096)
    connections.allow_open_files(2000)
    assert limits["now"] == (2000 + connections.REFUSED_LINGERING + connections.OTHER_FILES, 4096)
    with pytest.raises(UserError, match=r"^--max-connections 5,000 needs 5,128 open files, .* to 3,968$"):
        connections.allow_open_files(5000)
