"""Slots: a fixed number of places for streams that come and go (a server's requests), each with
its own sampling rule, all stepped together: a few tokens of every stream per compiled call.

A stream's text depends only on its own prompt, rule and random numbers: priming reads the
prompt alone (``Stepper.start``, one stream), and every step computes each stream's numbers with
the same code whatever the other streams are (``slot_kernels``); a stream alone is stepped with
its products split between threads, to the same numbers. A stream that leaves frees its
place at once: the last stream moves into it, so that the streams in use are always the first
ones and a step reads only those (rounded up to a tile of ``TILE_STREAMS``). Everything about a
place moves with it, its random numbers included: each stream draws with its own generator,
``RANDOM_BLOCK`` uniforms at a time and in order (:meth:`Slots.draw`).
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from charlstm.sampling import kernels, slot_kernels
from charlstm.sampling.kernels import LOGPROBS, RULE_COLUMNS, WINDOW
from charlstm.sampling.slot_kernels import TILE_STREAMS
from charlstm.sampling.stepper import Stepper, StepState

if TYPE_CHECKING:
    from charlstm.sampling.draw import SamplingRule

RANDOM_BLOCK = 256  # uniforms drawn ahead for each stream


class Slots:
    """``capacity`` stream places over one model (its ``Stepper``'s weights and precision), stepped
    by ``threads`` threads (Numba's thread count by default)."""

    def __init__(self, stepper: Stepper, capacity: int, threads: int | None = None):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        places = _whole_tiles(capacity)
        self.stepper, self.capacity, self.count = stepper, capacity, 0
        state = stepper.state(places)  # [x | h | 0] of each layer, c, the gates' and logits' rows
        self.xh, self.c, self.gates, self.logits = state.xh, state.c, state.gates, state.logits
        threads = max(1, threads if threads is not None else kernels.threads())
        self._act = [np.zeros_like(state.act) for _ in range(threads)]  # scratch of each thread
        self._helpers = [ThreadPoolExecutor(1, thread_name_prefix="charlstm-slots") for _ in range(threads - 1)]
        self.tokens = np.zeros(places, np.int64)
        self.rules = np.zeros((places, RULE_COLUMNS))  # each stream's rule (SamplingRule.args)
        vocab = stepper.model.config.vocab_size
        # What each stream's rule reads besides its logits: the bias of each id, the times each was
        # written, and the ids among its last ``window`` tokens read or written (a ring, and counts).
        self.bias = np.zeros((places, vocab), np.float32)
        self.written = np.zeros((places, vocab), np.int32)
        self.recent = np.zeros((places, vocab), np.int32)
        self.ring = np.zeros((places, 0), np.int32)  # as wide as the widest window asked for
        self._read: tuple[object, int, np.ndarray, np.ndarray, np.ndarray] | None = None  # the last prompt's window
        self.ring_at = np.zeros((places, 2), np.int64)
        self.u = np.ones((places, RANDOM_BLOCK))  # each stream's next uniforms, from u[i, used[i]] on
        self.used = np.zeros(places, np.int64)
        self.rngs: list[np.random.Generator | None] = [None] * places
        # The log-probabilities of the latest call's ids, for the streams that ask (-1: none):
        # (count, tokens) of the ids drawn, and (count, tokens, N) of the N likeliest ids and theirs.
        self.logprobs = np.zeros((0, 0), np.float32)
        self.top_ids = np.zeros((0, 0, 0), np.int64)
        self.top_logprobs = np.zeros((0, 0, 0), np.float32)

    @property
    def free(self) -> int:
        return self.capacity - self.count

    def add(
        self, primed: StepState, rule: SamplingRule, rng: np.random.Generator | None = None, read: Sequence[int] = ()
    ) -> int:
        """Place a stream primed alone (``Stepper.start`` of one prompt) with its rule, the
        generator it draws with (:meth:`draw`) and the ids it read (for the repetition penalty's
        window); its index."""
        if self.count >= self.capacity:
            raise RuntimeError("no free slot")
        i, window = self.count, int(rule.args()[WINDOW])
        if window > self.ring.shape[1]:
            self.ring = np.concatenate(
                [self.ring, np.zeros((len(self.ring), window - self.ring.shape[1]), np.int64)], 1
            )
        self.xh[:, i] = primed.xh[:, 0]
        self.c[:, i] = primed.c[:, 0]
        self.logits[i] = primed.logits[0]
        self.rules[i] = rule.args()
        self.bias[i] = rule.bias_row(self.bias.shape[1])
        self.written[i] = 0
        self._remember(i, read, window)
        self.rngs[i], self.used[i] = rng, 0
        self.u[i] = 1.0 - rng.random(RANDOM_BLOCK) if rng is not None else 1.0
        self.count += 1
        return i

    def _remember(self, i: int, read: Sequence[int], window: int) -> None:
        """Stream i's window starts with the last ``window`` ids it read: worked out once for a
        prompt that several streams read (the same object, as ``n`` choices share it)."""
        if self._read is None or self._read[0] is not read or self._read[1] != window:
            ring, at, recent = np.zeros(max(window, 1), np.int32), np.zeros(2, np.int64), np.zeros_like(self.recent[i])
            kernels.remember_all(np.asarray(read[-window:] if window else [], np.int64), window, ring, at, recent)
            self._read = read, window, ring, at, recent
        _, _, ring, at, recent = self._read
        self.ring[i, :window], self.ring_at[i], self.recent[i] = ring[:window], at, recent

    def clear(self) -> None:
        """Free every place."""
        self.count = 0

    def remove(self, i: int) -> int | None:
        """Free place ``i``: the last stream moves into it. Returns the index it had (None if it was
        the last one): whoever keeps the indices renumbers it to ``i``."""
        last = self.count - 1
        self.count -= 1
        if i == last:
            return None
        for a in (self.xh, self.c):
            a[:, i] = a[:, last]
        for a in (self.logits, self.rules, self.bias, self.written, self.recent, self.ring, self.ring_at, self.u,
                  self.used):  # fmt: skip
            a[i] = a[last]
        self.rngs[i], self.rngs[last] = self.rngs[last], None
        return last

    def draw(self, tokens: int) -> np.ndarray:
        """``run`` with each stream's own random numbers: its generator's uniforms, in order
        whatever the calls' sizes (at most ``RANDOM_BLOCK`` tokens a call)."""
        if not 0 < tokens <= RANDOM_BLOCK:
            raise ValueError(f"tokens must be in 1..{RANDOM_BLOCK}, not {tokens}")
        for i in np.flatnonzero(self.used[: self.count] + tokens > RANDOM_BLOCK):
            rng = self.rngs[i]
            if rng is not None:
                self.u[i] = np.concatenate([self.u[i, self.used[i] :], 1.0 - rng.random(self.used[i])])
            self.used[i] = 0
        ids = self.run(self.u, self.used, tokens)
        self.used[: self.count] += tokens
        return ids

    def run(self, u: np.ndarray, start: np.ndarray, tokens: int) -> np.ndarray:
        """``tokens`` ids for every stream in use -> (count, tokens): each draws by its rule with its
        uniforms ``u[i, start[i]:]`` (in (0, 1]), then they all step on what they drew. The streams
        are shared out in whole tiles between this thread and the slots' helper threads; the
        compiled code holds no Python lock, so the parts run side by side. A stream alone has its
        products split between threads instead (``Stepper``'s thread count), where that gives
        the same numbers (``Stepper.rows_match``)."""
        out = np.empty((self.count, tokens), np.int64)
        asked = int(self.rules[: self.count, LOGPROBS].max(initial=-1))  # -1: nobody asks
        scored = (self.count, tokens) if asked >= 0 else (0, 0)
        self.logprobs = np.zeros(scored, np.float32)
        self.top_ids = np.zeros((*scored, max(asked, 0)), np.int64)  # each stream's own N first, the rest zeros
        self.top_logprobs = np.zeros((*scored, max(asked, 0)), np.float32)
        scores = self.logprobs, self.top_ids, self.top_logprobs
        history = self.bias, self.written, self.recent, self.ring, self.ring_at
        if self.count == 1 and self.stepper.rows_match:
            s = self.xh, self.c, self.gates, self._act[0], self.logits
            slot_kernels.run_one(self.stepper.arrays, *s, self.rules, history, u, int(start[0]), out, scores)
            return out
        streams = _whole_tiles(self.count)
        self.tokens[self.count : streams] = 0
        tiles = streams // TILE_STREAMS
        parts = min(len(self._helpers) + 1, tiles)
        bounds = [TILE_STREAMS * (tiles * i // parts) for i in range(parts + 1)]

        def part(i: int) -> None:
            s = self.xh, self.c, self.gates, self._act[i], self.logits, self.tokens
            slot_kernels.run_streams(
                self.stepper.arrays,
                *s,
                bounds[i],
                bounds[i + 1],
                self.count,
                self.rules,
                history,
                u,
                start,
                out,
                scores,
            )

        helped = [self._helpers[i - 1].submit(part, i) for i in range(1, parts)]
        part(0)
        for done in helped:
            done.result()
        return out

    def close(self) -> None:
        """Stop the helper threads."""
        for helper in self._helpers:
            helper.shutdown(wait=False)


def _whole_tiles(streams: int) -> int:
    """``streams`` rounded up to whole tiles of TILE_STREAMS."""
    return -(-streams // TILE_STREAMS) * TILE_STREAMS
