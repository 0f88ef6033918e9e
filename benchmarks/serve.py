"""``charlstm serve`` under load, beside ``charlstm sample`` for the same model.

For each number of concurrent clients (1, 8 and 64 by default) it starts the server on
127.0.0.1, lets every client stream completions back to back (``--requests`` each, ``--tokens``
tokens each, its own seed) and prints the aggregate tokens/s over the whole phase and the time
to first token (from sending the request to the first text) p50 and p99. Beside it: the tokens/s
of ``charlstm sample --num-samples N --length TOKENS`` for the same model, in this process
(the same code the command runs, after its kernels are compiled), and the ratio.

The clients are one asyncio loop (httpx) in this process that parses each stream only up to its
first text and then counts the tokens from the final usage chunk, so they take little of the CPU
the server needs. Nothing leaves 127.0.0.1; every loop is bounded.

    python benchmarks/serve.py RUN_DIR
    python benchmarks/serve.py RUN_DIR --clients 1,8,64 --tokens 2000 --requests 5 --repeats 3
"""

from __future__ import annotations

import argparse
import asyncio
import json
import platform
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run", help="a run directory or checkpoint")
    parser.add_argument("--clients", default="1,8,64")
    parser.add_argument("--tokens", type=int, default=500, help="tokens per completion")
    parser.add_argument("--requests", type=int, default=5, help="completions per client, one after another")
    parser.add_argument("--repeats", type=int, default=1, help="runs of each phase; medians are printed")
    args = parser.parse_args()
    counts = [int(c) for c in args.clients.split(",")]
    print(f"# {platform.processor() or platform.machine()}, model {args.run}, {args.tokens} tokens per completion")
    print(
        f"{'clients':>7} {'serve tok/s':>12} {'ttft p50 ms':>12} {'ttft p99 ms':>12} {'sample tok/s':>13} {'ratio':>6}"
    )
    for n in counts:
        rates, p50s, p99s, samples = [], [], [], []
        for _ in range(args.repeats):
            server = Server(Path(args.run), "--max-streams", str(max(counts)), "--quiet")
            try:
                rate, ttft = asyncio.run(_load(server.url, n, args.requests, args.tokens))
            finally:
                server.stop()
            rates.append(rate)
            p50s.append(_percentile(ttft, 0.5) * 1e3)
            p99s.append(_percentile(ttft, 0.99) * 1e3)
            samples.append(sample_speed(args.run, n, args.tokens))
        rate, sample = statistics.median(rates), statistics.median(samples)
        print(f"{n:>7} {rate:>12,.0f} {statistics.median(p50s):>12.1f} {statistics.median(p99s):>12.1f}"
              f" {sample:>13,.0f} {rate / sample:>6.2f}", flush=True)  # fmt: skip


if __name__ == "__main__":
    main()
