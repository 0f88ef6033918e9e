"""A load test of ``charlstm serve`` on 127.0.0.1, bounded in count and time: two rounds of 200
requests from 64 concurrent clients (some streaming, some hanging up part way, some malformed).
Every good request gets its full text, every bad one its 400; the streams in flight return to
0 and the server stays up. (Its memory from round to round is a figure of ``benchmarks/serve.py``,
not a check here: a resident size moves with the allocator and the machine's load, and a leak of a
few kB a request would hide in a margin wide enough never to fail on a busy machine.)"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import httpx
import openai
import pytest

from tests.serving import Server

REQUESTS, CLIENTS, TIMEOUT = 200, 64, 60


def one_request(url: str, model: str, i: int) -> str:
    """Request ``i`` of a round; what happened, as a word the test checks."""
    kind, tokens = i % 10, 40 + (i * 37) % 260
    if kind <= 6:  # good: five plain, two streamed
        client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=TIMEOUT)
        if kind <= 4:
            r = client.completions.create(model=model, prompt="KING:", max_tokens=tokens, seed=i)
            ok = len(r.choices[0].text) == tokens and r.choices[0].finish_reason == "length"
        else:
            stream = client.completions.create(model=model, prompt="FOOL:", max_tokens=tokens, seed=i, stream=True)
            ok = len("".join(c.choices[0].text for c in stream if c.choices)) == tokens
        return "full" if ok else "short"
    if kind == 7:  # hangs up after the first piece
        body = {"prompt": "QUEEN:", "max_tokens": 600, "stream": True}
        with httpx.stream("POST", url + "/v1/completions", json=body, timeout=TIMEOUT) as r:
            for line in r.iter_lines():
                if line.startswith("data: "):
                    json.loads(line[6:])
                    return "left"
        return "no data"
    bodies = [b'{"prompt": "KING:", "temperature": -1}', b'{"prompt": ', b'{"prompt": "KING:", "max_tokens": 99999}']
    r = httpx.post(url + "/v1/completions", content=bodies[i % 3], headers={"content-type": "application/json"},
                   timeout=TIMEOUT)  # fmt: skip
    return "refused" if r.status_code == 400 and "error" in r.json() else f"status {r.status_code}"


def expected(i: int) -> str:
    return "full" if i % 10 <= 6 else "left" if i % 10 == 7 else "refused"


@pytest.mark.slow
def test_two_rounds_of_200_requests_from_64_clients(shared_run):
    server = Server(shared_run, "--max-streams", "64", "--max-tokens", "600", "--quiet")
    try:
        model = shared_run.name
        for _ in range(2):
            with ThreadPoolExecutor(CLIENTS) as pool:
                outcomes = list(pool.map(lambda i: one_request(server.url, model, i), range(REQUESTS)))
            assert outcomes == [expected(i) for i in range(REQUESTS)]
            state = server.wait_idle(15)
            assert (state["active"], state["queued"]) == (0, 0)
            assert server.proc.poll() is None and state["status"] == "ok"
        metrics = httpx.get(server.url + "/metrics").text
        assert 'charlstm_requests_total{status="400"}' in metrics
        assert "charlstm_active_streams 0.0" in metrics
    finally:
        assert server.stop() == 0
    assert "Traceback" not in server.output
