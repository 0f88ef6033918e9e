"""Slots: a fixed number of places for streams that come and go (a server's requests), each with
its own sampling rule, all stepped together by one compiled call per character.

A stream's text depends only on its own prompt, rule and random numbers: priming reads the
prompt alone (``Stepper.prime``, one stream), and every step computes each stream's numbers with
the same code whatever the other streams are (``slot_kernels``). A stream that leaves frees its
place at once: the last stream moves into it, so that the streams in use are always the first
ones and a step reads only those (rounded up to a tile of ``TILE_STREAMS``).
"""

from __future__ import annotations

import numpy as np

from charlstm.sampling import slot_kernels
from charlstm.sampling.draw import SamplingRule
from charlstm.sampling.slot_kernels import TILE_STREAMS
from charlstm.sampling.stepper import Stepper, StepState


class Slots:
    """``capacity`` stream places over one model (its ``Stepper``'s weights and precision)."""

    def __init__(self, stepper: Stepper, capacity: int):
        if capacity < 1:
            raise ValueError(f"capacity must be at least 1, not {capacity}")
        cfg = stepper.model.config
        places = -(-capacity // TILE_STREAMS) * TILE_STREAMS
        n, vocab = cfg.hidden, cfg.vocab_size
        self.stepper, self.capacity, self.count = stepper, capacity, 0
        # [x | h] of each layer, and a zero column: bf16 weight pairs read the h half in pairs.
        self.xh = np.zeros((cfg.layers, places, 2 * n + 1), np.float32)
        self.c = np.zeros((cfg.layers, places, 0 if cfg.cell == "gru" else n), np.float32)
        self.gates = np.zeros((places, 4 * n), np.float32)
        self.act = np.zeros(4 * n, np.float32)
        self.logits = np.zeros((places, vocab), np.float32)
        self.tokens = np.zeros(places, np.int64)
        self.temperature = np.zeros(places, np.float64)
        self.top_k = np.zeros(places, np.int64)
        self.top_p = np.ones(places, np.float64)

    @property
    def free(self) -> int:
        return self.capacity - self.count

    def add(self, primed: StepState, rule: SamplingRule) -> int:
        """Place a stream primed alone (``Stepper.prime`` of one prompt) with its rule; its index."""
        if self.count >= self.capacity:
            raise RuntimeError("no free slot")
        i, n = self.count, self.xh.shape[2] // 2
        self.xh[:, i, : 2 * n] = primed.xh[:, 0]
        self.c[:, i] = primed.c[:, 0]
        self.logits[i] = primed.logits[0]
        self.temperature[i], self.top_k[i], self.top_p[i] = rule.args()
        self.count += 1
        return i

    def remove(self, i: int) -> int | None:
        """Free place ``i``: the last stream moves into it. Returns the index it had (None if it was
        the last one): whoever keeps the indices renumbers it to ``i``."""
        last = self.count - 1
        self.count -= 1
        if i == last:
            return None
        for a in (self.xh, self.c):
            a[:, i] = a[:, last]
        for a in (self.logits, self.temperature, self.top_k, self.top_p):
            a[i] = a[last]
        return last

    def draw(self, u: np.ndarray) -> np.ndarray:
        """The next id of every stream in use from its logits, each by its rule and its u in (0, 1]."""
        head = slice(0, self.count)
        return slot_kernels.draw_each(self.logits, self.temperature[head], self.top_k[head], self.top_p[head], u)

    def run(self, u: np.ndarray, start: np.ndarray, tokens: int) -> np.ndarray:
        """``tokens`` ids for every stream in use -> (count, tokens): each draws by its rule with its
        uniforms ``u[i, start[i]:]`` (in (0, 1]), then they all step on what they drew, in one call."""
        out = np.empty((self.count, tokens), np.int64)
        streams = -(-self.count // TILE_STREAMS) * TILE_STREAMS
        self.tokens[self.count : streams] = 0
        rule = self.temperature, self.top_k, self.top_p
        s = self.xh, self.c, self.gates, self.act, self.logits, self.tokens
        slot_kernels.run_streams(self.stepper.arrays, *s, streams, *rule, u, start, out)
        return out

    def step(self, ids: np.ndarray) -> None:
        """Every stream in use reads its id: the logits of its next step replace its current ones."""
        self.tokens[: self.count] = ids
        streams = -(-self.count // TILE_STREAMS) * TILE_STREAMS
        self.tokens[self.count : streams] = 0  # the tile's spare places read any valid id
        s = self.xh, self.c, self.gates, self.act, self.logits, self.tokens
        slot_kernels.step_streams(self.stepper.arrays, *s, streams)
