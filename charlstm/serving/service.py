"""The service behind the app: the engine, its model's card, the limits and the metrics, and the
engine's life: started with a first completion run in-process (``Service.open``), ended with
the completions in flight (``Service.close``)."""

from __future__ import annotations

import hmac
import threading

from starlette.requests import Request

from charlstm.config import ServeConfig
from charlstm.net.model import CharLSTM
from charlstm.sampling.draw import SamplingRule, priming_ids
from charlstm.sampling.scoring import TokenScores, score_tokens
from charlstm.serving.engine import SHUTTING_DOWN, Closed, Engine, Job, Piece, Prompt
from charlstm.serving.metrics import Metrics
from charlstm.serving.requests import ApiError
from charlstm.store.card import ModelCard

WARM_UP_TOKENS = 8  # the first completion, run when the app starts
WARM_UP_SECONDS = 60


class Service:
    """The engine, its model's card, the limits and the metrics, shared by the routes. The app
    owns the engine: :meth:`open` starts it and runs a first completion through it, :meth:`close`
    ends it (the app's lifespan calls both; a mounted app, whose lifespan its parent does not
    run unless told to, opens at its first request)."""

    def __init__(self, engine: Engine, card: ModelCard, config: ServeConfig, metrics: Metrics, model: CharLSTM):
        self.engine, self.card, self.config, self.metrics = engine, card, config, metrics
        self.model = model  # its fp32 weights: what a prompt is scored with (echo with logprobs)
        self.stopping = False  # set when the server is told to stop (a plain flag: set from a signal handler)
        self._opening = threading.Lock()
        self.opened = False

    def open(self) -> None:
        """Start the engine and complete a few tokens through it, in this process (the first
        completion of a fresh process sets up threads and caches, which no user should wait for);
        once opened, nothing. Raises ``RuntimeError`` saying why when the model cannot generate
        (from the fault, which the engine then keeps to itself), ``Closed`` once closing."""
        with self._opening:
            if self.opened:
                return
            if self.stopping:
                raise Closed(SHUTTING_DOWN)
            self.engine.quiet = True
            try:
                self._first_completion()
            finally:
                self.engine.quiet = False
            self.opened = True

    def _first_completion(self) -> None:
        self.engine.start()
        done, last = threading.Event(), []

        def deliver(piece: Piece) -> None:
            if piece.finish is not None or piece.error is not None:
                last.append(piece)
                done.set()

        prompt, rule = Prompt(priming_ids(self.engine.vocab, "")), SamplingRule(1.0, None, None)
        self.engine.submit([Job(0, prompt, rule, 0, WARM_UP_TOKENS, (), deliver)])
        if not done.wait(WARM_UP_SECONDS):
            raise RuntimeError(f"a first completion of {WARM_UP_TOKENS} tokens took over {WARM_UP_SECONDS} s")
        if last[0].error is not None:
            if self.stopping:
                raise Closed(SHUTTING_DOWN)
            raise RuntimeError("a first completion failed") from self.engine.last_fault

    def score(self, ids: list[int], top: int) -> TokenScores:
        """A prompt's tokens scored as ``charlstm eval`` reads a text (from zero, in fp32; the
        first token, which nothing comes before, is not scored), with the ``top`` likeliest in each
        place. Called off the event loop: a long prompt takes a forward pass."""
        return score_tokens(self.model, ids, None, top)

    def close(self) -> None:
        """Take no more completions, end those in flight (their last piece says why) and stop the engine."""
        self.stopping = True
        self.engine.close()

    def check_key(self, request: Request) -> None:
        key = self.config.api_key
        if key is None:
            return
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise ApiError(401, "missing API key: send the header 'Authorization: Bearer KEY'", code="invalid_api_key")
        if not hmac.compare_digest(token.strip().encode("latin-1"), key.encode()):  # headers arrive as latin-1
            raise ApiError(401, "incorrect API key provided", code="invalid_api_key")
