"""The HTTP side of ``charlstm serve``: an ASGI app (Starlette) that speaks OpenAI's completions
API over the engine, plus ``/v1/models``, ``/health``, ``/metrics`` and the playground page.

Every answer that is not a success is OpenAI's error shape, ``{"error": {"message", "type",
"param", "code"}}``: 400 for a bad value, 401 for a missing or wrong key, 404, 405, 413 for a body
over ``MAX_BODY``, 429 (with ``Retry-After``) when the queue is full, 503 while shutting down,
and 500 for a fault of ours, whose traceback goes to the server's log, never to the client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import time
import uuid
from collections.abc import AsyncIterator
from dataclasses import asdict
from typing import Any

import numpy as np
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect, Request
from starlette.responses import HTMLResponse, JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from charlstm import web
from charlstm.sampling.draw import choose_seed, priming_ids
from charlstm.sampling.scoring import named
from charlstm.serving.engine import INTERNAL, SHUTTING_DOWN, Busy, Closed, Job, Piece, Prompt
from charlstm.serving.metrics import CONTENT_TYPE, Metrics
from charlstm.serving.requests import ApiError, Completion, bad, read_completion
from charlstm.serving.scored import Scored
from charlstm.serving.service import Service
from charlstm.store.card import ModelCard
from charlstm.validate import shown

log = logging.getLogger("charlstm.serve")

MAX_BODY = 1 << 20  # bytes of a request body
BODY_SECONDS = 30  # for a request's body to arrive
DISCONNECT_POLL = 0.5  # seconds between checks that a client waiting for a whole completion is still there
STOP_POLL = 0.1  # seconds between checks, while a body arrives, that the server is not stopping


def build_app(service: Service) -> Starlette:
    """The ASGI app over ``service``; mount it in another app, or run it with uvicorn."""

    async def opened() -> None:  # an app mounted without its lifespan opens at its first request
        if service.opened:
            return
        try:
            await asyncio.to_thread(service.open)
        except Closed:
            raise ApiError(503, SHUTTING_DOWN, "server_error", code="shutting_down") from None
        except RuntimeError as e:
            log.error("the model cannot generate here", exc_info=e)
            cannot = "the model cannot generate here; the server log has the details"
            raise ApiError(503, cannot, "server_error") from None

    async def completions(request: Request) -> Response:
        service.check_key(request)
        await opened()
        completion = read_completion(
            await _read_json(service, request), service.engine.vocab, service.config, service.card.id
        )
        return await _complete(service, request, completion)

    async def models(request: Request) -> Response:
        service.check_key(request)
        return JSONResponse({"object": "list", "data": [_model_entry(service.card)]})

    async def model(request: Request) -> Response:
        service.check_key(request)
        name = request.path_params["model"]
        if name != service.card.id:
            raise ApiError(404, f"the model {shown(name)} does not exist", code="model_not_found")
        return JSONResponse(_model_entry(service.card))

    async def health(request: Request) -> Response:
        with contextlib.suppress(ApiError):
            await opened()
        engine = service.engine
        if not engine.running or not service.opened:
            return JSONResponse({"status": "error", "active": 0, "queued": 0}, status_code=503)
        return JSONResponse({"status": "ok", "active": engine.active, "queued": engine.queued})

    async def metrics(request: Request) -> Response:
        service.check_key(request)
        return Response(service.metrics.text(), media_type=CONTENT_TYPE)

    async def page(request: Request) -> Response:
        return HTMLResponse(_page(service, request.scope.get("root_path", "")))

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:  # also a parent app's, to own the engine when mounted
        await asyncio.to_thread(service.open)
        try:
            yield
        finally:
            await asyncio.to_thread(service.close)

    routes = [
        Route("/", page, methods=["GET"]),
        Route("/health", health, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
        Route("/v1/models", models, methods=["GET"]),
        Route("/v1/models/{model:path}", model, methods=["GET"]),
        Route("/v1/completions", completions, methods=["POST"]),
    ]
    handlers = {ApiError: _api_error, HTTPException: _http_error, Exception: _internal_error}
    app = Starlette(routes=routes, exception_handlers=handlers, lifespan=lifespan)  # type: ignore[arg-type]
    app.add_middleware(_CountStatuses, metrics=service.metrics)
    app.state.service = service
    return app


async def _read_json(service: Service, request: Request) -> Any:
    length = request.headers.get("content-length", "")
    if length.isdigit() and int(length) > MAX_BODY:
        raise ApiError(413, f"the request body is over {MAX_BODY:,} bytes", code="request_too_large")
    body = bytearray()

    async def read() -> None:
        async for chunk in request.stream():  # a client gone meanwhile: ClientDisconnect, answered below
            body.extend(chunk)
            if len(body) > MAX_BODY:
                raise ApiError(413, f"the request body is over {MAX_BODY:,} bytes", code="request_too_large")

    reading = asyncio.ensure_future(read())
    deadline = time.monotonic() + BODY_SECONDS
    try:
        while not reading.done():  # a body sent at once is done at the first look
            if service.stopping:  # else uvicorn would cancel this read at its shutdown: a 500
                raise ApiError(503, "the server is shutting down", "server_error", code="shutting_down")
            if time.monotonic() > deadline:
                raise ApiError(408, f"the request body did not arrive within {BODY_SECONDS} s", code="timeout")
            await asyncio.wait({reading}, timeout=STOP_POLL)
        reading.result()
    except ClientDisconnect:
        raise ApiError(400, "the client went away before its request arrived", code="client_disconnected") from None
    finally:
        reading.cancel()
    try:
        return json.loads(body)
    except (ValueError, UnicodeDecodeError, RecursionError):  # RecursionError: nested too deep
        raise bad("the request body is not valid JSON") from None


def _jobs(service: Service, completion: Completion, pieces: asyncio.Queue[Piece]) -> list[Job]:
    loop, cfg, vocab = asyncio.get_running_loop(), completion.sampling, service.engine.vocab
    seed, rule = choose_seed(cfg.seed), completion.rule

    def deliver(piece: Piece) -> None:  # on the engine's thread
        loop.call_soon_threadsafe(pieces.put_nowait, piece)

    jobs = []
    for p, text in enumerate(completion.prompts):
        prompt = Prompt(priming_ids(vocab, text))  # primed once for its n choices
        for i in range(cfg.num_samples):
            index = p * cfg.num_samples + i
            job = Job(index, prompt, rule, seed, cfg.length, completion.stops, deliver)
            job.stream = i  # choice i of each prompt draws as that prompt's sample i
            jobs.append(job)
    return jobs


async def _complete(service: Service, request: Request, completion: Completion) -> Response:
    pieces: asyncio.Queue[Piece] = asyncio.Queue()
    asked = completion.rule.logprobs
    echoed = [await asyncio.to_thread(_prompt_scores, service, p, asked) for p in completion.prompts] if (
        completion.echo and asked is not None) else None  # fmt: skip
    jobs = _jobs(service, completion, pieces)
    try:
        service.engine.submit(jobs)
    except Busy as e:
        raise ApiError(429, f"the server is busy ({e}); retry shortly", "requests", code="rate_limit_exceeded",
                       headers={"Retry-After": "1"}) from None  # fmt: skip
    except Closed as e:
        raise ApiError(503, str(e), "server_error", code="shutting_down") from None
    head = {"id": f"cmpl-{uuid.uuid4().hex}", "object": "text_completion", "created": int(time.time()),
            "model": service.card.id}  # fmt: skip
    prompt_tokens = sum(len(service.engine.vocab.encode(text)) for text in completion.prompts)
    if completion.stream:
        events = _events(service, completion, jobs, pieces, head, prompt_tokens, echoed)
        return StreamingResponse(events, media_type="text/event-stream", headers={"Cache-Control": "no-cache"})
    return await _whole(service, request, completion, jobs, pieces, head, prompt_tokens, echoed)


def _prompt_scores(service: Service, prompt: str, top: int) -> Scored:
    """A prompt's tokens with their log-probabilities, in OpenAI's shape: the first has none."""
    vocab = service.engine.vocab
    ids, names = vocab.encode(prompt), vocab.token_names()
    scores = service.score(ids, top)
    offsets = (np.cumsum(vocab.char_starts()[ids]) - 1).tolist()  # a byte's: the character it goes into
    tops = [named(names, i, v) for i, v in zip(scores.top_ids, scores.top_logprobs, strict=True)]
    return Scored(
        [names[t] for t in ids], [None, *map(float, scores.logprobs)][: len(ids)], [None, *tops][: len(ids)], offsets
    )


def _scored(scored: Scored | None, shift: int = 0, before: Scored | None = None) -> dict[str, Any] | None:
    """OpenAI's legacy ``logprobs`` object: ``before`` (an echoed prompt's) first, then ``scored``
    with its offsets moved past the prompt."""
    if scored is None and before is None:
        return None
    parts = [p for p in (before, scored) if p is not None]
    moved = [o + shift for o in scored.text_offset] if scored is not None else []
    return {"tokens": [t for p in parts for t in p.tokens],
            "token_logprobs": [lp for p in parts for lp in p.token_logprobs],
            "top_logprobs": [top for p in parts for top in p.top_logprobs],
            "text_offset": (before.text_offset if before is not None else []) + moved}  # fmt: skip


def _usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}  # fmt: skip


def _choice(index: int, text: str, finish: str | None, logprobs: dict[str, Any] | None = None) -> dict[str, Any]:
    return {"text": text, "index": index, "logprobs": logprobs, "finish_reason": finish}


def _prompt_of(completion: Completion, index: int) -> str:
    return completion.prompts[index // completion.sampling.num_samples]


def _failed(piece: Piece) -> ApiError:
    if piece.error == INTERNAL:
        return ApiError(500, piece.error, "server_error")
    return ApiError(503, piece.error or "", "server_error", code="shutting_down")


async def _whole(service: Service, request: Request, completion: Completion, jobs: list[Job],
                 pieces: asyncio.Queue[Piece], head: dict[str, Any], prompt_tokens: int,
                 echoed: list[Scored] | None) -> Response:  # fmt: skip
    texts = [[_prompt_of(completion, j.index)] if completion.echo else [] for j in jobs]  # pieces, joined at the end
    scores: list[list[Scored]] = [[] for _ in jobs]
    finish: list[str | None] = [None] * len(jobs)
    tokens = [0] * len(jobs)
    try:
        while None in finish:
            try:
                piece = await asyncio.wait_for(pieces.get(), DISCONNECT_POLL)
            except asyncio.TimeoutError:  # not yet the built-in TimeoutError on Python 3.10
                if await request.is_disconnected():
                    return Response(status_code=499)  # nobody reads it; counted as such
                continue
            if piece.error:
                raise _failed(piece)
            texts[piece.index].append(piece.text)
            tokens[piece.index] = piece.tokens
            finish[piece.index] = piece.finish
            if piece.logprobs is not None:
                scores[piece.index].append(piece.logprobs)
    finally:
        for job in jobs:
            job.cancelled = True  # those finished have left already; the rest leave at the next step
    choices = []
    for i, (text, reason) in enumerate(zip(texts, finish, strict=True)):
        before = None if echoed is None else echoed[i // completion.sampling.num_samples]
        joined = _joined(scores[i]) if completion.rule.logprobs is not None else None
        shift = len(_prompt_of(completion, i)) if completion.echo else 0
        choices.append(_choice(i, "".join(text), reason, _scored(joined, shift, before)))
    return JSONResponse({**head, "choices": choices, "usage": _usage(prompt_tokens, sum(tokens))})


def _joined(parts: list[Scored]) -> Scored:
    return Scored(*([x for p in parts for x in getattr(p, name)] for name in Scored.__dataclass_fields__))


async def _events(service: Service, completion: Completion, jobs: list[Job], pieces: asyncio.Queue[Piece],
                  head: dict[str, Any], prompt_tokens: int,
                  echoed: list[Scored] | None) -> AsyncIterator[str]:  # fmt: skip
    """Server-sent events: chunks of text as they come, then ``data: [DONE]``. A client that goes
    away cancels this generator, and its jobs leave the engine at the next step."""

    def event(payload: dict[str, Any]) -> str:
        return f"data: {json.dumps(payload)}\n\n"

    left, tokens = len(jobs), [0] * len(jobs)
    try:
        if completion.echo:
            for job in jobs:
                before = (
                    None if echoed is None else _scored(None, 0, echoed[job.index // completion.sampling.num_samples])
                )
                yield event({**head, "choices": [_choice(job.index, _prompt_of(completion, job.index), None, before)]})
        while left:
            piece = await pieces.get()
            if piece.error:
                yield event(_failed(piece).body())
                break
            tokens[piece.index] = piece.tokens
            left -= piece.finish is not None
            shift = len(_prompt_of(completion, piece.index)) if completion.echo else 0
            scored = _scored(piece.logprobs, shift)
            yield event({**head, "choices": [_choice(piece.index, piece.text, piece.finish, scored)]})
        else:
            if completion.include_usage:
                yield event({**head, "choices": [], "usage": _usage(prompt_tokens, sum(tokens))})
        yield "data: [DONE]\n\n"
    finally:
        for job in jobs:
            job.cancelled = True


def _model_entry(card: ModelCard) -> dict[str, Any]:
    facts = {k: v for k, v in asdict(card).items() if k not in ("id", "created")}
    return {"id": card.id, "object": "model", "created": card.created, "owned_by": "charlstm", "charlstm": facts}


def _page(service: Service, root: str) -> str:
    """The playground, with the model's facts and where the API is (under a mount, its path)."""
    facts = {**asdict(service.card), "key_required": service.config.api_key is not None,
             "max_tokens": service.config.max_tokens, "root": root}  # fmt: skip
    return web.page("charlstm playground", facts, "playground.js")


def _error_response(error: ApiError) -> JSONResponse:
    return JSONResponse(error.body(), status_code=error.status, headers=error.headers)


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return _error_response(exc)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    status = exc.status_code
    if status == 404:
        message = f"no such endpoint: {request.method} {shown(request.url.path)}"
    elif status == 405:
        message = f"{request.method} is not allowed on {shown(request.url.path)}"
    else:
        message = str(exc.detail)
    return _error_response(ApiError(status, message, code={404: "not_found", 405: "method_not_allowed"}.get(status),
                                    headers=dict(exc.headers or {})))  # fmt: skip


async def _internal_error(request: Request, exc: Exception) -> Response:
    log.error("internal error answering %s %s", request.method, request.url.path, exc_info=exc)
    return _error_response(ApiError(500, "internal server error; the server log has the details", "server_error"))


class _CountStatuses:
    """Counts every answer by its status code (``charlstm_requests_total``)."""

    def __init__(self, app: ASGIApp, metrics: Metrics):
        self.app, self.metrics = app, metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status: list[int] = []

        async def counting(message: Message) -> None:
            if message["type"] == "http.response.start":
                status.append(message["status"])
                self.metrics.answered(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send=counting)
        except Exception:
            if not status:
                self.metrics.answered(500)
            raise
