"""``charlstm serve`` under load, beside ``charlstm sample`` for the same model.

For each number of concurrent clients (1, 8 and 64 by default) it starts the server on
127.0.0.1, lets every client stream completions back to back (``--requests`` each, ``--tokens``
tokens each, its own seed) and prints the aggregate tokens/s over the whole phase and the time
to first token (from sending the request to the first text) p50 and p99. Beside it: the tokens/s
of ``charlstm sample --num-samples N --length TOKENS`` for the same model, in this process
(the same code the command runs, after its kernels are compiled), and the ratio.

The clients are one asyncio loop (httpx) in this process that parses each stream only up to its
first text and then counts the tokens from the final usage chunk, so they take little of the CPU
the server needs. The server's resident memory after each phase is printed too (a leak shows as
growth from one repeat to the next). Nothing leaves 127.0.0.1; every loop is bounded.

``--flood SILENT,UNFINISHED`` measures the connection bounds instead: it opens SILENT connections
that send nothing and UNFINISHED ones that send part of a request head, times a completion before
and during them, and how long after opening each one the server closed it (``--header-timeout``);
then it holds ``--max-connections`` connections and times how fast one more is refused.

    python benchmarks/serve.py RUN_DIR
    python benchmarks/serve.py RUN_DIR --clients 1,8,64 --tokens 2000 --requests 5 --repeats 3
    python benchmarks/serve.py RUN_DIR --flood 200,50 --header-timeout 2 --max-connections 300
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
import socket
import statistics
import sys
import time
from pathlib import Path

import httpx

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
import charlstm  # noqa: E402
from tests.serving import Server  # noqa: E402


async def _client(http: httpx.AsyncClient, url: str, index: int, requests: int, tokens: int) -> tuple[int, list[float]]:
    """One client's completions, streamed one after another. It reads events only until the first
    text (the time to first token), then bytes, and takes the count from the final usage chunk:
    a load generator should leave the two cores to the server."""
    got, ttft = 0, []
    for r in range(requests):
        body = {"prompt": "ROMEO:", "max_tokens": tokens, "stream": True, "seed": index * 1000 + r,
                "stream_options": {"include_usage": True}}  # fmt: skip
        sent, first, head, tail = time.perf_counter(), None, b"", b""
        async with http.stream("POST", url + "/v1/completions", json=body) as response:
            response.raise_for_status()
            async for chunk in response.aiter_bytes():
                if first is None:
                    head += chunk
                    events = [e[6:] for e in head.split(b"\n\n") if e.startswith(b"data: {")]
                    if any(c["text"] for e in events for c in json.loads(e)["choices"]):
                        first = time.perf_counter()
                        ttft.append(first - sent)
                tail = (tail + chunk)[-4096:]
        usage = [e for e in tail.split(b"\n\n") if e.startswith(b"data: {") and b'"usage"' in e]
        got += json.loads(usage[-1][6:])["usage"]["completion_tokens"]
    return got, ttft


async def _load(url: str, clients: int, requests: int, tokens: int) -> tuple[float, list[float]]:
    limits = httpx.Limits(max_connections=clients + 4, max_keepalive_connections=clients + 4)
    async with httpx.AsyncClient(timeout=600, limits=limits) as http:
        started = time.perf_counter()
        results = await asyncio.gather(*(_client(http, url, i, requests, tokens) for i in range(clients)))
        seconds = time.perf_counter() - started
    total = sum(got for got, _ in results)
    return total / seconds, [t for _, ts in results for t in ts]


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(q * (len(ordered) - 1))))]


def sample_speed(run: str, streams: int, tokens: int) -> float:
    """Tokens/s of ``charlstm sample --num-samples streams --length tokens`` (kernels compiled first)."""
    model = charlstm.load(run)
    model.generate_many("ROMEO:", n=streams, length=16, seed=0)  # compile or load the kernels
    started = time.perf_counter()
    texts = model.generate_many("ROMEO:", n=streams, length=tokens, seed=1)
    seconds = time.perf_counter() - started
    return sum(len(t) - len("ROMEO:") for t in texts) / seconds


def _completion_ms(url: str) -> float:
    started = time.perf_counter()
    r = httpx.post(url + "/v1/completions", json={"prompt": "", "max_tokens": 50, "seed": 1}, timeout=60)
    r.raise_for_status()
    return (time.perf_counter() - started) * 1e3


def _closed_after(sock: socket.socket, opened: float, limit: float) -> float | None:
    """Seconds from ``opened`` until the server closed ``sock``, or None if it was still open at ``limit``."""
    sock.settimeout(max(0.01, opened + limit - time.perf_counter()))
    try:
        sock.recv(1)
    except ConnectionResetError:
        pass
    except TimeoutError:
        return None
    return time.perf_counter() - opened


def flood(run: str, silent: int, unfinished: int, head_seconds: float, cap: int) -> None:
    """The connection bounds under a flood of connections that never send a whole head."""
    server = Server(Path(run), "--header-timeout", str(head_seconds), "--max-connections", str(cap), "--quiet")
    held: list[socket.socket] = []
    try:
        host, port = server.url.removeprefix("http://").rsplit(":", 1)
        alone = statistics.median(_completion_ms(server.url) for _ in range(5))
        opened = time.perf_counter()
        held = [socket.create_connection((host, int(port))) for _ in range(silent + unfinished)]
        for sock in held[silent:]:
            sock.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: 127.0.0.1\r\n")
        during = statistics.median(_completion_ms(server.url) for _ in range(5))
        closed = [_closed_after(sock, opened, head_seconds + 30) for sock in held]
        late = [t for t in closed if t is not None]
        print(f"# {platform.processor() or platform.machine()}, model {run}, --header-timeout {head_seconds}")
        print(
            f"{silent} silent and {unfinished} unfinished connections: {len(late)} closed, the last after"
            f" {max(late):.2f} s (median {statistics.median(late):.2f} s); {len(closed) - len(late)} still open"
        )
        print(f"a 50-token completion: {alone:.1f} ms alone, {during:.1f} ms while they were open (median of 5)")
        for sock in held:
            sock.close()
        held = [socket.create_connection((host, int(port))) for _ in range(cap)]
        time.sleep(0.5)  # the server takes them
        waits = []
        for _ in range(20):
            started = time.perf_counter()
            with socket.create_connection((host, int(port))) as probe:
                probe.settimeout(5)
                answer = probe.recv(100)
            waits.append((time.perf_counter() - started) * 1e3)
        status = answer.decode("latin-1").split("\r\n")[0]
        print(
            f"past --max-connections {cap}: {status} after"
            f" {statistics.median(waits):.2f} ms (median of 20, from connecting)"
        )
    finally:
        for sock in held:
            sock.close()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory or checkpoint")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per completion")
    parser.add_argument("--requests", type=int, default=5, help="completions per client, one after another")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each phase; medians are printed")
    parser.add_argument("--flood", help="SILENT,UNFINISHED: measure the connection bounds instead")
    parser.add_argument("--header-timeout", type=float, default=2.0, help="with --flood")
    parser.add_argument("--max-connections", type=int, default=300, help="with --flood")
    args = parser.parse_args()
    if args.flood:
        silent, unfinished = (int(c) for c in args.flood.split(","))
        flood(args.run, silent, unfinished, args.header_timeout, args.max_connections)
        return
    counts = [int(c) for c in args.clients.split(",")]
    print(f"# {platform.processor() or platform.machine()}, model {args.run}, {args.tokens} tokens per completion")
    print(
        f"{'clients':>7} {'serve tok/s':>12} {'ttft p50 ms':>12} {'ttft p99 ms':>12} {'sample tok/s':>13} {'ratio':>6}"
        f" {'server MB':>13}"
    )
    for n in counts:
        rates, p50s, p99s, samples, memory = [], [], [], [], []
        for _ in range(args.repeats):
            server = Server(Path(args.run), "--max-streams", str(max(counts)), "--quiet")
            try:
                rate, ttft = asyncio.run(_load(server.url, n, args.requests, args.tokens))
                memory.append(server.rss() / 1024)
            finally:
                server.stop()
            rates.append(rate)
            p50s.append(_percentile(ttft, 0.5) * 1e3)
            p99s.append(_percentile(ttft, 0.99) * 1e3)
            samples.append(sample_speed(args.run, n, args.tokens))
        rate, sample = statistics.median(rates), statistics.median(samples)
        mb = f"{memory[0]:,.0f}-{memory[-1]:,.0f}"  # the first repeat's and the last's
        print(f"{n:>7} {rate:>12,.0f} {statistics.median(p50s):>12.1f} {statistics.median(p99s):>12.1f}"
              f" {sample:>13,.0f} {rate / sample:>6.2f} {mb:>13}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
