"""The engine behind ``charlstm serve``: continuous batching of completions in one worker thread.

Every choice of every request is a :class:`Job`. Jobs wait in a bounded queue; between two
steps the worker primes waiting prompts (for a few milliseconds at most, so that a burst does not stall the
streams running) and gives each a slot; then every job in a slot draws its next tokens and all
of them advance in one compiled call (:class:`~charlstm.sampling.slots.Slots`). After each call
every job reads its new tokens: a job that reaches its length or a stop sequence (found as the
text arrives, :mod:`~charlstm.serving.stops`), or whose client went away, leaves its slot in
that call. A fault in one job's prompt or text ends that job alone (``INTERNAL``); a fault of the
step itself ends the jobs in the slots, and the queue goes on.

Each job has its own random generator (from the request's seed and the choice's index), kept
with its slot, and its numbers do not depend on the other slots, so a request gives the same
text whatever else the server is doing. New text goes out through the job's ``deliver``
callback, called on the worker thread: the first token at once, the last piece at once, and
between them every ``FLUSH_SECONDS``; text that might be the start of a stop sequence is held
back until it is known not to be, so streamed pieces add up to exactly the text of the same
request without streaming. A ``deliver`` that raises (its receiver's event loop gone) ends its
job; a client that hangs up sets its jobs' ``cancelled``, and they leave at the next call.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import numpy as np

from charlstm.choices import FinishReason
from charlstm.data.vocab import CharVocab, TextDecoder
from charlstm.net.model import State
from charlstm.sampling.draw import SamplingRule, priming_ids, stream_rng
from charlstm.sampling.scoring import named
from charlstm.sampling.slot_kernels import TILE_STREAMS
from charlstm.sampling.slots import RANDOM_BLOCK, Slots
from charlstm.sampling.stepper import StepState
from charlstm.serving.scored import Scored, hand_out
from charlstm.serving.stops import StopMatcher

log = logging.getLogger("charlstm.serve")

FLUSH_SECONDS = 0.1  # a stream's new text goes out this often (its first token at once)
CALL_SECONDS = 0.012  # tokens per compiled call: as many as take about this long (a new job waits for one call)
MAX_TOKENS_PER_CALL = min(64, RANDOM_BLOCK)
TIMING_TOKENS = 16
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
    tokens: int  # tokens generated so far (at a stop: up to and including the stop's, whose text is left out)
    finish: FinishReason | None = None  # set on the choice's last piece
    error: str | None = None  # the server ended the choice early (shutting down, an internal fault)
    logprobs: Scored | None = None  # the scores of the tokens of ``text``, when the job asked for them


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
    unsent: list[str] = field(default_factory=list)  # certain text not yet handed out
    decoder: TextDecoder | None = None
    stops_found: StopMatcher | None = None
    first_token: float | None = None
    flushed: float = 0.0  # when its text last went out
    written: int = 0  # characters decoded so far
    sent: int = 0  # characters handed out so far
    scored: deque[tuple[int, int, str, float, dict[str, float]]] = field(default_factory=deque)
    # (where its text ends, where it starts, name, log-probability, likeliest) of each token not yet handed out
    partial: list[tuple[int, str, float, dict[str, float]]] = field(default_factory=list)  # bytes of a character
    stream: int | None = None  # its generator's index under the seed (None: its index): its place among its prompt's


class Meter:
    """What the engine reports as it runs (the server's metrics); these do nothing."""

    def generated(self, tokens: int) -> None: ...

    def first_token(self, seconds: float) -> None: ...

    def finished(self, tokens: int, seconds: float) -> None: ...

    def load(self, active: int, queued: int) -> None: ...


class Engine:
    """Continuous batching over the ``slots`` of one model (``slots.stepper``) and a queue of at
    most ``max_queue`` waiting jobs. Call :meth:`start`, then :meth:`submit` from any thread."""

    def __init__(self, slots: Slots, vocab: CharVocab, start: State | None, max_queue: int, meter: Meter | None = None):
        self.slots, self.vocab, self.start_state = slots, vocab, start
        self._names = vocab.token_names()
        self.max_queue, self.meter = max_queue, meter or Meter()
        self._queue: deque[Job] = deque()
        self._jobs: list[Job] = []  # by slot
        self.last_fault: Exception | None = None  # the latest fault in generating, kept for whoever asks
        self.quiet = False  # faults kept but not logged (``Service.open`` reports its own)
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
        """Start the worker; returns once it has run its kernels once (they are then ready).
        Raises :class:`Closed` after :meth:`close`."""
        with self._wake:
            if self._closing:
                raise Closed(SHUTTING_DOWN)
            if self._thread.ident is None:
                self._thread.start()
        self._ready.wait()
        if self._failure is not None:
            raise RuntimeError("the engine could not run its kernels") from self._failure
        if self._closing:
            raise Closed(SHUTTING_DOWN)

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
        self.slots.add(primed, SamplingRule(1.0, 2, 0.9))  # and a stream alone, whose products use every thread
        self.slots.run(u, start, 1)
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
        try:
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
                    self.meter.load(self.active, self.queued)
                except Exception as e:  # a fault outside any one job's: those in the slots end, the worker goes on
                    self._fault(e, "the engine failed; ending the completions in the slots")
                    self._end(INTERNAL, queued=False)
        finally:  # whatever stops the worker, every job gets its last piece
            self._end(SHUTTING_DOWN, queued=True)
            self.slots.close()

    def _fault(self, error: Exception, what: str) -> None:
        """Keep the fault (``last_fault``) and log it, unless ``quiet`` (a caller that reports it)."""
        self.last_fault = error
        if not self.quiet:
            log.error(what, exc_info=error)

    def _end(self, error: str, queued: bool) -> None:
        """End the jobs in the slots (and with ``queued``, those waiting), saying why."""
        waiting: list[Job] = []
        if queued:
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
            except Exception as e:  # this job fails alone, and says so
                self._fault(e, "could not start a completion")
                _safely(job.deliver, Piece(job.index, "", 0, error=INTERNAL))

    def _place(self, job: Job) -> None:
        """Prime the job's prompt (once for all its request's choices) and give it a slot."""
        job.decoder, job.stops_found = self.vocab.decoder(), StopMatcher(job.stops)
        if job.max_tokens == 0:
            _safely(job.deliver, Piece(job.index, "", 0, FinishReason.LENGTH))
            return
        if job.prompt.state is None:
            job.prompt.state = self._prime(job.prompt.ids)
        self.slots.add(
            job.prompt.state,
            job.rule,
            stream_rng(job.seed, job.index if job.stream is None else job.stream),
            job.prompt.ids,
        )
        self._jobs.append(job)

    def _prime(self, ids: list[int]) -> StepState:
        """A prompt read alone, as ``charlstm sample`` reads it (how depends on the prompt alone, so
        its text does not change with the load)."""
        return self.slots.stepper.start(ids, self.start_state)

    def _advance(self) -> None:
        """Every job in a slot draws and reads a few tokens in one call; then each reads its new
        tokens, and those done leave their slots."""
        count = self.slots.count
        joining = self._queue and self.slots.free  # more to prime: a short call, then admit again
        seconds = JOINING_CALL_SECONDS if joining else CALL_SECONDS
        tokens = max(1, min(MAX_TOKENS_PER_CALL, int(seconds / self._step_seconds)))
        tokens = min(tokens, min(job.max_tokens - job.tokens for job in self._jobs))  # none goes past its length
        started = time.perf_counter()
        try:
            ids = self.slots.draw(tokens)
        except Exception as e:  # the step itself: the jobs in the slots cannot go on, the queue can
            self._fault(e, "generation failed; ending the completions in the slots")
            self._end(INTERNAL, queued=False)
            return
        now = time.perf_counter()
        self._step_seconds = 0.5 * self._step_seconds + 0.5 * (now - started) / tokens
        done = []
        for i, (job, row) in enumerate(zip(self._jobs, ids.tolist(), strict=True)):
            try:
                if job.cancelled or self._read(job, row, now, i):
                    done.append(i)
            except Exception as e:  # this job's fault: it ends alone
                self._fault(e, "a completion failed; ending it")
                _safely(job.deliver, Piece(job.index, "", job.tokens, error=INTERNAL))
                done.append(i)
        self.meter.generated(count * tokens)
        for i in reversed(done):  # from the end: a job moved into a freed slot is never a done one
            moved = self.slots.remove(i)
            if moved is not None:
                self._jobs[i] = self._jobs[moved]
            self._jobs.pop()

    def _read(self, job: Job, row: list[int], now: float, slot: int) -> bool:
        """The job's new tokens decoded and searched for its stops, and what is certain handed out
        when it is time; True when the job is done (or its receiver is gone)."""
        assert job.decoder is not None and job.stops_found is not None
        finish, matcher, scored = None, job.stops_found, job.rule.logprobs is not None
        if matcher.stops or scored:
            for used, token in enumerate(row, 1):
                text = job.decoder([token])
                if scored:
                    self._score(job, slot, used - 1, token, text)
                fed = matcher.feed(text) if matcher.stops else None
                job.unsent.append(text if fed is None else fed.text)
                if fed is not None and fed.stopped:
                    job.tokens, finish = job.tokens + used, FinishReason.STOP
                    break
            else:
                job.tokens += len(row)
        else:
            job.unsent.append(job.decoder(row))
            job.tokens += len(row)
        if finish is None and job.tokens >= job.max_tokens:
            finish = FinishReason.LENGTH
            job.unsent.append(matcher.finish())
        first = job.first_token is None  # nothing handed out yet: the first text goes at once
        if finish is None and not first and now - job.flushed < FLUSH_SECONDS:
            return False
        text = "".join(job.unsent)
        if not text and finish is None:  # all held back (a stop's beginning, part of a character)
            return False
        job.unsent.clear()
        job.flushed = now
        if first:
            job.first_token = now
            self.meter.first_token(now - job.submitted)
        if finish is not None:
            self.meter.finished(job.tokens, now - (job.first_token or now))
        piece = Piece(job.index, text, job.tokens, finish, logprobs=_sent(job, len(text)) if scored else None)
        return not _handed(job.deliver, piece) or finish is not None

    def _score(self, job: Job, slot: int, k: int, token: int, text: str) -> None:
        """Keep token k of this call's row with its score, until its text is handed out; a byte
        that does not end its character waits for the one that does (their text ends together)."""
        asked = job.rule.logprobs or 0  # the row holds as many as the most any stream asked for
        top = named(self._names, self.slots.top_ids[slot, k, :asked], self.slots.top_logprobs[slot, k, :asked])
        job.partial.append((job.written, self._names[token], float(self.slots.logprobs[slot, k]), top))
        if text:
            job.written += len(text)
            job.scored.extend((job.written, *entry) for entry in job.partial)
            job.partial.clear()


def _sent(job: Job, chars: int) -> Scored:
    """The scores of the tokens whose text is handed out now (``chars`` more characters)."""
    job.sent += chars
    return hand_out(job.scored, job.sent)


def _handed(deliver: Callable[[Piece], None], piece: Piece) -> bool:
    """Hand out a piece; False when the receiver failed (its event loop closed, its client gone),
    which must not stop the others."""
    try:
        deliver(piece)
    except Exception:
        log.debug("a piece could not be delivered", exc_info=True)
        return False
    return True


def _safely(deliver: Callable[[Piece], None], piece: Piece) -> None:
    """Hand out a last piece, whatever the receiver does."""
    _handed(deliver, piece)
