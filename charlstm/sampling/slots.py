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

from concurrent.futures import ThreadPoolExecutor
from typing import TYPE_CHECKING

import numpy as np

from charlstm.sampling import kernels, slot_kernels
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
        self.temperature = np.zeros(places, np.float64)
        self.top_k = np.zeros(places, np.int64)
        self.top_p = np.ones(places, np.float64)
        self.u = np.ones((places, RANDOM_BLOCK))  # each stream's next uniforms, from u[i, used[i]] on
        self.used = np.zeros(places, np.int64)
        self.rngs: list[np.random.Generator | None] = [None] * places

    @property
    def free(self) -> int:
        return self.capacity - self.count

    def add(self, primed: StepState, rule: SamplingRule, rng: np.random.Generator | None = None) -> int:
        """Place a stream primed alone (``Stepper.prime`` of one prompt) with its rule and the
        generator it draws with (:meth:`draw`); its index."""
        if self.count >= self.capacity:
            raise RuntimeError("no free slot")
        i = self.count
        self.xh[:, i] = primed.xh[:, 0]
        self.c[:, i] = primed.c[:, 0]
        self.logits[i] = primed.logits[0]
        self.temperature[i], self.top_k[i], self.top_p[i] = rule.args()
        self.rngs[i], self.used[i] = rng, 0
        self.u[i] = 1.0 - rng.random(RANDOM_BLOCK) if rng is not None else 1.0
        self.count += 1
        return i

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
        for a in (self.logits, self.temperature, self.top_k, self.top_p, self.u, self.used):
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
        if self.count == 1 and self.stepper.rows_match:
            s, first = (self.xh, self.c, self.gates, self._act[0], self.logits), int(start[0])
            rule = self.temperature[0], self.top_k[0], self.top_p[0]
            slot_kernels.run_one(self.stepper.arrays, *s, *rule, u[0, first : first + tokens], out[0])
            return out
        streams = _whole_tiles(self.count)
        self.tokens[self.count : streams] = 0
        tiles = streams // TILE_STREAMS
        parts = min(len(self._helpers) + 1, tiles)
        bounds = [TILE_STREAMS * (tiles * i // parts) for i in range(parts + 1)]

        def part(i: int) -> None:
            s = self.xh, self.c, self.gates, self._act[i], self.logits, self.tokens
            rule = self.temperature, self.top_k, self.top_p
            slot_kernels.run_streams(
                self.stepper.arrays, *s, bounds[i], bounds[i + 1], self.count, *rule, u, start, out
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
