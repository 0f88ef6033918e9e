"""The server's Prometheus metrics (``GET /metrics``), in a registry of its own per app."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.exposition import CONTENT_TYPE_LATEST

from charlstm.serving.engine import Meter

CONTENT_TYPE = CONTENT_TYPE_LATEST
_TTFT_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
_RATE_BUCKETS = (10, 30, 100, 300, 1_000, 3_000, 10_000, 30_000, 100_000)


class Metrics(Meter):
    """Requests by status, tokens generated, active streams, queue length, time to first token
    and tokens per second of each completion."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        r = self.registry
        self.requests = Counter("charlstm_requests", "HTTP requests answered, by status code.", ["status"], registry=r)
        self.tokens = Counter("charlstm_tokens_generated", "Tokens generated.", registry=r)
        self.active = Gauge("charlstm_active_streams", "Completions being generated now.", registry=r)
        self.queued = Gauge("charlstm_queue_length", "Completions waiting for a place.", registry=r)
        self.ttft = Histogram(
            "charlstm_time_to_first_token_seconds", "From a request's arrival to its first token.",
            buckets=_TTFT_BUCKETS, registry=r,
        )  # fmt: skip
        self.rate = Histogram(
            "charlstm_tokens_per_second", "Tokens per second of each completion, after its first.",
            buckets=_RATE_BUCKETS, registry=r,
        )  # fmt: skip

    def answered(self, status: int) -> None:
        self.requests.labels(status=str(status)).inc()

    def generated(self, tokens: int) -> None:
        self.tokens.inc(tokens)

    def first_token(self, seconds: float) -> None:
        self.ttft.observe(seconds)

    def finished(self, tokens: int, seconds: float) -> None:
        if tokens > 1 and seconds > 0:
            self.rate.observe((tokens - 1) / seconds)

    def load(self, active: int, queued: int) -> None:
        self.active.set(active)
        self.queued.set(queued)

    def text(self) -> bytes:
        return generate_latest(self.registry)
