"""The engine behind ``charlstm serve``: continuous batching of completions in one worker thread.

Every choice of every request is a :class:`Job`. Jobs wait in a bounded queue; between two
steps the worker primes waiting prompts (for a few milliseconds at most, so that a burst does not stall the
streams running) and gives each a slot; then every job in a slot draws its next token and all
of them advance in one compiled step (:class:`~charlstm.sampling.slots.Slots`). A job that
reaches its length or a stop sequence, or whose client went away, leaves its slot at once.

Each job has its own random generator (from the request's seed and the choice's index) and its
numbers do not depend on the other slots, so a request gives the same text whatever else the
server is doing. New text goes out through the job's ``deliver`` callback, called on the worker
thread: the first token at once, then every ``FLUSH_SECONDS``; text that might be the start of a stop
sequence is held back until it is known not to be, so streamed pieces add up to exactly the text
of the same request without streaming.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np
import torch

from charlstm.choices import FinishReason
from charlstm.data.vocab import CharVocab, TextDecoder
from charlstm.net.model import State
from charlstm.sampling.draw import SamplingRule, priming_ids
from charlstm.sampling.slot_kernels import TILE_STREAMS
from charlstm.sampling.slots import Slots
from charlstm.sampling.stepper import Stepper, StepState

log = logging.getLogger("charlstm.serve")

FLUSH_SECONDS = 0.1  # a stream's new text goes out this often (its first token at once)
CALL_SECONDS = 0.012  # tokens per compiled call: as many as take about this long (a new job waits for one call)
MAX_TOKENS_PER_CALL = 64
TIMING_TOKENS = 16
SHORT_PROMPT = 256  # tokens: a prompt up to this long is read by the compiled step, a longer one by torch
RANDOM_BLOCK = 256  # uniforms drawn ahead for each stream
ADMIT_SECONDS = 0.005  # priming waiting prompts between two calls stops after this long
JOINING_CALL_SECONDS = 0.002  # a call while jobs wait for a free slot: they join sooner
SHUTTING_DOWN = "the server is shutting down"
INTERNAL = "internal error while generating; the server log has the details"


class Busy(Exception):
    """The queue is full: try again shortly."""


class Closed(Exception):
    """The engine is shutting down and takes no new jobs."""


@dataclass(frozen=True)
class Piece:
    """New text of one choice, as the engine hands it out."""

    index: int  # the choice's index in its request
    text: str  # the text since the last piece
    tokens: int  # tokens generated so far (at the end: those the final text holds)
    finish: FinishReason | None = None  # set on the choice's last piece
    error: str | None = None  # the server ended the choice early (shutting down, an internal fault)


@dataclass(eq=False)
class Prompt:
    """A prompt as the model reads it, primed once for all the choices that continue it."""

    ids: list[int]
    state: StepState | None = None


@dataclass(eq=False)
class Job:
    """One choice of one request."""

    index: int
    prompt: Prompt
    rule: SamplingRule
    seed: int
    max_tokens: int
    stops: tuple[str, ...]
    deliver: Callable[[Piece], None]  # called on the worker thread
    submitted: float = field(default_factory=time.perf_counter)
    cancelled: bool = False  # set by the request's side when its client goes away
    # The worker's own:
    tokens: int = 0
    text: str = ""
    sent: int = 0  # characters of ``text`` handed out
    pending: list[int] = field(default_factory=list)
    decoder: TextDecoder | None = None
    rng: np.random.Generator | None = None
    first_token: float | None = None
    flushed: float = 0.0  # when its text last went out


class Meter:
    """What the engine reports as it runs (the server's metrics); these do nothing."""

    def generated(self, tokens: int) -> None: ...

    def first_token(self, seconds: float) -> None: ...

    def finished(self, tokens: int, seconds: float) -> None: ...

    def load(self, active: int, queued: int) -> None: ...


class Engine:
    """Continuous batching over one model's ``Stepper`` with ``capacity`` slots and a queue of
    at most ``max_queue`` waiting jobs. Call :meth:`start`, then :meth:`submit` from any thread."""

    def __init__(
        self,
        stepper: Stepper,
        vocab: CharVocab,
        start: State | None,
        capacity: int,
        max_queue: int,
        meter: Meter | None = None,
    ):
        self.stepper, self.vocab, self.start_state = stepper, vocab, start
        self.slots = Slots(stepper, capacity)
        self.max_queue, self.meter = max_queue, meter or Meter()
        self._queue: deque[Job] = deque()
        self._jobs: list[Job] = []  # by slot
        self._u = np.ones((self.slots.xh.shape[1], RANDOM_BLOCK))
        self._upos = np.zeros(self.slots.xh.shape[1], np.int64)
        self._wake = threading.Condition()
        self._closing = False
        self._ready = threading.Event()
        self._failure: BaseException | None = None
        self._step_seconds = 1e-3  # of one token for every slot, as measured (``warm_up`` guesses it first)
        self._thread = threading.Thread(target=self._run, name="charlstm-engine", daemon=True)

    @property
    def running(self) -> bool:
        """The worker is alive and takes jobs."""
        return self._thread.is_alive() and not self._closing

    @property
    def active(self) -> int:
        return len(self._jobs)

    @property
    def queued(self) -> int:
        return len(self._queue)

    def start(self) -> None:
        """Start the worker; returns once it has run its kernels once (they are then ready)."""
        with self._wake:
            if self._thread.ident is None:
                self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError("the engine could not run its kernels") from self._failure

    def _warm_up(self) -> None:
        """Compile (or load from Numba's cache) the kernels the slots run and run them once on the
        worker's own thread (the first parallel call from a thread sets up its threads: 0.3 s here)."""
        primed = self._prime(priming_ids(self.vocab, ""))
        for _ in range(min(TILE_STREAMS, self.slots.capacity)):
            self.slots.add(primed, SamplingRule(1.0, 2, 0.9))
        u, start = np.ones((TILE_STREAMS, TIMING_TOKENS)), np.zeros(TILE_STREAMS, np.int64)
        self.slots.run(u, start, 1)
        started = time.perf_counter()
        self.slots.run(u, start, TIMING_TOKENS)
        self._step_seconds = (time.perf_counter() - started) / TIMING_TOKENS  # a first guess for one tile
        self.slots.clear()

    def close(self, timeout: float = 5.0) -> None:
        """Take no more jobs, end those in flight (their last piece says why) and stop the worker."""
        with self._wake:
            self._closing = True
            self._wake.notify()
        if self._thread.is_alive():
            self._thread.join(timeout)

    def submit(self, jobs: Sequence[Job]) -> None:
        """Queue a request's jobs, all or none: raises :class:`Busy` when the queue cannot take them."""
        with self._wake:
            if self._closing or not self._thread.is_alive():
                raise Closed(SHUTTING_DOWN)
            if any(job.cancelled for job in self._queue):  # clients gone while waiting hold no place
                self._queue = deque(job for job in self._queue if not job.cancelled)
            if len(self._queue) + len(jobs) > self.max_queue + self.slots.free:
                raise Busy(f"{len(self._queue)} completions are waiting for a slot")
            self._queue.extend(jobs)
            self._wake.notify()
        self.meter.load(self.active, self.queued)

    def _run(self) -> None:
        try:
            self._warm_up()
        except BaseException as e:  # raised again by ``start``, in the caller's thread
            self._failure = e
            return
        finally:
            self._ready.set()
        while True:
            with self._wake:
                while not self._closing and not self._queue and not self._jobs:
                    self._wake.wait()
                if self._closing:
                    break
            try:
                self._admit()
                if self._jobs:
                    self._advance()
            except Exception:  # a fault of ours: end what is in flight, say so, keep serving
                log.exception("generation failed; ending the completions in flight")
                self._end_all(INTERNAL)
            self.meter.load(self.active, self.queued)
        self._end_all(SHUTTING_DOWN)
        self.slots.close()

    def _end_all(self, error: str) -> None:
        with self._wake:
            waiting, self._queue = list(self._queue), deque()
        for job in [*self._jobs, *waiting]:
            _safely(job.deliver, Piece(job.index, "", job.tokens, error=error))
        self._jobs.clear()
        self.slots.clear()

    def _admit(self) -> None:
        started = time.perf_counter()
        while self.slots.free and time.perf_counter() - started < ADMIT_SECONDS:
            with self._wake:
                if not self._queue:
                    return
                job = self._queue.popleft()
            if job.cancelled:
                continue
            try:
                self._place(job)
            except Exception:  # this job fails alone, and says so
                log.exception("could not start a completion")
                _safely(job.deliver, Piece(job.index, "", 0, error=INTERNAL))

    def _place(self, job: Job) -> None:
        """Prime the job's prompt (once for all its request's choices) and give it a slot."""
        job.decoder, job.rng = self.vocab.decoder(), _rng(job.seed, job.index)
        if job.max_tokens == 0:
            _safely(job.deliver, Piece(job.index, "", 0, FinishReason.LENGTH))
            return
        if job.prompt.state is None:
            job.prompt.state = self._prime(job.prompt.ids)
        i = self.slots.add(job.prompt.state, job.rule)
        self._jobs.append(job)
        self._u[i], self._upos[i] = 1.0 - job.rng.random(RANDOM_BLOCK), 0

    def _prime(self, ids: list[int]) -> StepState:
        """A prompt read alone: token by token when short, else as one sequence through torch
        (which one depends on the prompt alone, so its text does not change with the load)."""
        if len(ids) <= SHORT_PROMPT:
            return self.stepper.read(ids, self.start_state)
        return self.stepper.prime(torch.tensor([ids]), self.start_state)[1]

    def _advance(self) -> None:
        """Every job in a slot draws and reads a few tokens in one call; those done leave."""
        count = self.slots.count
        joining = self._queue and self.slots.free  # more to prime: a short call, then admit again
        seconds = JOINING_CALL_SECONDS if joining else CALL_SECONDS
        tokens = max(1, min(MAX_TOKENS_PER_CALL, int(seconds / self._step_seconds)))
        tokens = min(tokens, min(job.max_tokens - job.tokens for job in self._jobs))  # none goes past its length
        for i in np.flatnonzero(self._upos[:count] + tokens > RANDOM_BLOCK):  # keep each job's uniforms in order
            self._u[i] = np.concatenate([self._u[i, self._upos[i] :], 1.0 - self._jobs[i].rng.random(self._upos[i])])
            self._upos[i] = 0
        started = time.perf_counter()
        ids = self.slots.run(self._u, self._upos, tokens)
        now = time.perf_counter()
        self._step_seconds = 0.5 * self._step_seconds + 0.5 * (now - started) / tokens
        self._upos[:count] += tokens
        done = []
        for i, (job, row) in enumerate(zip(self._jobs, ids.tolist(), strict=True)):
            if job.cancelled:
                done.append(i)
                continue
            job.pending.extend(row)
            job.tokens += len(row)
            if job.first_token is None:
                job.first_token = job.flushed = now
                self.meter.first_token(now - job.submitted)
            elif job.tokens < job.max_tokens and now - job.flushed < FLUSH_SECONDS:
                continue
            job.flushed = now
            if _flush(job):
                self.meter.finished(job.tokens, time.perf_counter() - job.first_token)
                done.append(i)
        self.meter.generated(count * tokens)
        for i in reversed(done):  # from the end: a job moved into a freed slot is never a done one
            moved = self.slots.remove(i)
            if moved is not None:
                self._jobs[i] = self._jobs[moved]
                self._u[i], self._upos[i] = self._u[moved], self._upos[moved]
            self._jobs.pop()


def _rng(seed: int, index: int) -> np.random.Generator:
    """The generator of choice ``index`` of a request with ``seed``: its own, whatever else runs."""
    return np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(index,)))


def _flush(job: Job) -> bool:
    """Decode the job's pending tokens and hand out what is certain; True when the job is done."""
    finish = None
    if job.stops:
        searched = max(0, len(job.text) - max(map(len, job.stops)) + 1)
        spent = job.tokens - len(job.pending)
        for used, token in enumerate(job.pending, 1):
            job.text += job.decoder([token])
            at = _first_stop(job.text, job.stops, searched)
            if at is not None:
                job.text, job.tokens, finish = job.text[:at], spent + used, FinishReason.STOP
                break
    else:
        job.text += job.decoder(job.pending)
    job.pending.clear()
    if finish is None and job.tokens >= job.max_tokens:
        finish = FinishReason.LENGTH
    end = len(job.text) if finish else len(job.text) - _held_back(job.text, job.stops)
    if end > job.sent or finish:
        piece = Piece(job.index, job.text[job.sent : end], job.tokens, finish)
        job.sent = end
        _safely(job.deliver, piece)
    return finish is not None


def _first_stop(text: str, stops: tuple[str, ...], start: int) -> int | None:
    found = [at for at in (text.find(stop, start) for stop in stops) if at >= 0]
    return min(found) if found else None


def _held_back(text: str, stops: tuple[str, ...]) -> int:
    """How many characters at the end of ``text`` could begin a stop sequence."""
    for size in range(min(len(text), max(map(len, stops), default=1) - 1), 0, -1):
        tail = text[-size:]
        if any(stop.startswith(tail) for stop in stops):
            return size
    return 0


def _safely(deliver: Callable[[Piece], None], piece: Piece) -> None:
    """Hand out a piece; a receiver that fails (its event loop closed) must not stop the others."""
    try:
        deliver(piece)
    except Exception:
        log.debug("a piece could not be delivered", exc_info=True)
