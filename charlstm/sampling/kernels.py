"""Compiled (Numba) code for sampling, and nothing else: the float32 tanh, bf16 weights read as
float32, the gate math of each cell, and the sampling rules (temperature, top-k, top-p) on a row
of logits; ``slot_kernels.py`` steps streams with them. (The corpus's encoding loop is
``data/kernels.py``; these three modules are the only ones that import Numba.)

Calling ``nn.LSTM`` once per character pays oneDNN's set-up on every call (about a
millisecond per layer on CPU), and even NumPy costs about a microsecond per call, so a
Python-level step (some 40 calls per character) spends more time in calls than in
arithmetic. The compiled step runs a whole chunk of characters per call; ``stepper.py``
arranges the weights it reads.
"""

from __future__ import annotations

import numba
import numpy as np
from llvmlite import ir as llvm_ir
from numba.core import types
from numba.extending import intrinsic


def threads() -> int:
    """Threads Numba may use for one stream's products."""
    return numba.get_num_threads()


# Only reassociation and contraction are allowed (vectorised dot products, FMA): infinities
# and NaN keep their IEEE meaning, which top-k and top-p rely on. NumPy's error model drops
# Python's zero-division check, whose branch would keep loops from vectorising.
_JIT = {"cache": True, "nogil": True, "fastmath": {"reassoc", "contract"}, "error_model": "numpy"}
# float32 constants: a Python float would promote the arithmetic to float64, half the SIMD lanes.
_F = np.float32
_ONE, _HALF, _TWO, _NINE, _THIRD, _NEAR_ZERO = _F(1), _F(0.5), _F(2), _F(9), _F(1 / 3), _F(1e-3)
_TWO_LOG2E = _F(2 * 1.4426950408889634)
_LN2_HI, _LN2_LO = _F(0.693145751953125), _F(1.428606765330187e-06)  # ln 2 = HI + LO, HI exact in few bits
_E2, _E3, _E4, _E5, _E6, _E7 = (_F(1 / 2), _F(1 / 6), _F(1 / 24), _F(1 / 120), _F(1 / 720), _F(1 / 5040))
_P1, _P2, _P4, _P8, _P16 = _F(2**-1), _F(2**-2), _F(2**-4), _F(2**-8), _F(2**-16)
_SHIFT, _HIGH = np.uint32(16), np.uint32(0xFFFF0000)  # a bf16 is the top half of a float32


@numba.njit(inline="always", **_JIT)
def tanh32(x: float) -> float:
    """float32 tanh in plain arithmetic (no libm call), so loops over it vectorise; |error| < 2e-7.

    tanh(a) = (1 - t) / (1 + t) with t = e^(-2a) = 2^-k e^r and r = k ln2 - 2a in [-ln2/2, ln2/2].
    """
    a = min(abs(x), _NINE)  # tanh(9) rounds to 1 in float32
    k = int(a * _TWO_LOG2E + _HALF)  # 0..26
    r = (_F(k) * _LN2_HI - _TWO * a) + _F(k) * _LN2_LO
    e = _ONE + r * (_ONE + r * (_E2 + r * (_E3 + r * (_E4 + r * (_E5 + r * (_E6 + r * _E7))))))
    e *= _P1 if k & 1 else _ONE  # 2^-k from the bits of k, as selects rather than a table lookup
    e *= _P2 if k & 2 else _ONE
    e *= _P4 if k & 4 else _ONE
    e *= _P8 if k & 8 else _ONE
    e *= _P16 if k & 16 else _ONE
    t = (_ONE - e) / (_ONE + e)
    t = t if a > _NEAR_ZERO else a * (_ONE - a * a * _THIRD)  # no cancellation near 0
    return t if x >= 0 else -t


@intrinsic
def f32_from_bits(typingctx, bits):  # noqa: ANN001, ARG001
    """Reinterpret a uint32 as the float32 with those bits (a bf16 shifted into the top half)."""

    def codegen(context, builder, signature, args):  # noqa: ANN001, ARG001
        return builder.bitcast(args[0], llvm_ir.FloatType())

    return types.float32(types.uint32), codegen


LSTM, GRU, PEEPHOLE = 0, 1, 2  # the cells as the kernels name them (``Stepper`` arranges each)


@numba.njit(inline="always", **_JIT)
def _sigmoid_of_half(tanh_of_half: float) -> float:
    return _HALF * tanh_of_half + _HALF  # sigmoid(z) = (1 + tanh(z / 2)) / 2


@numba.njit(inline="always", **_JIT)
def lstm_cell(g: np.ndarray, bias: np.ndarray, c: np.ndarray, h: np.ndarray, act: np.ndarray) -> None:
    """One stream's LSTM gate math: pre-activations g (4H,) + bias (4H,),
    gates (i, f, o, g) with the sigmoid rows halved -> new c and h (H,) in place; act (4H,) scratch."""
    n = c.shape[0]
    for j in range(4 * n):
        act[j] = tanh32(g[j] + bias[j])
    for j in range(n):
        i, f, o = _sigmoid_of_half(act[j]), _sigmoid_of_half(act[n + j]), _sigmoid_of_half(act[2 * n + j])
        c[j] = f * c[j] + i * act[3 * n + j]
        h[j] = o * tanh32(c[j])


@numba.njit(inline="always", **_JIT)
def peephole_cell(g: np.ndarray, bias: np.ndarray, peep: np.ndarray, c: np.ndarray, h: np.ndarray) -> None:
    """``lstm_cell`` whose input and forget gates also read c(t-1) and whose output gate reads c(t):
    peep (3, H) holds p_i, p_f, p_o, halved like the sigmoid rows."""
    n = c.shape[0]
    for j in range(n):
        i = _sigmoid_of_half(tanh32(g[j] + bias[j] + peep[0, j] * c[j]))
        f = _sigmoid_of_half(tanh32(g[n + j] + bias[n + j] + peep[1, j] * c[j]))
        c[j] = f * c[j] + i * tanh32(g[3 * n + j] + bias[3 * n + j])
        h[j] = _sigmoid_of_half(tanh32(g[2 * n + j] + bias[2 * n + j] + peep[2, j] * c[j])) * tanh32(c[j])


@numba.njit(inline="always", **_JIT)
def gru_cell(g: np.ndarray, bias: np.ndarray, h: np.ndarray) -> None:
    """One stream's GRU gate math, ``nn.GRU``'s equations: g + bias (4H,) hold the reset and update
    pre-activations (halved), then the candidate's input part W_in x + b_in and recurrent part
    W_hn h + b_hn, kept apart because the reset gate scales only the latter."""
    n = h.shape[0]
    for j in range(n):
        r = _sigmoid_of_half(tanh32(g[j] + bias[j]))
        z = _sigmoid_of_half(tanh32(g[n + j] + bias[n + j]))
        candidate = tanh32(g[2 * n + j] + bias[2 * n + j] + r * (g[3 * n + j] + bias[3 * n + j]))
        h[j] = candidate + z * (h[j] - candidate)  # (1 - z) * candidate + z * h


@numba.njit(**_JIT)
def cell(kind: int, g: np.ndarray, bias: np.ndarray, peep: np.ndarray, c: np.ndarray, h: np.ndarray, act: np.ndarray):
    """One stream's gate math for the cell ``kind``: g (4H,) and bias (4H,) -> c and h (H,) in place."""
    if kind == GRU:
        gru_cell(g, bias, h)
    elif kind == PEEPHOLE:
        peephole_cell(g, bias, peep, c, h)
    else:
        lstm_cell(g, bias, c, h, act)


@numba.njit(**_JIT)
def keep_top_k(z: np.ndarray, k: int) -> None:
    """Keep the ``k`` largest of one row z (V,) in place; the rest become -inf (ties are kept)."""
    if 0 < k < z.shape[0]:
        kth = np.sort(z)[z.shape[0] - k]
        for v in range(z.shape[0]):
            if z[v] < kth:
                z[v] = -np.inf


@numba.njit(**_JIT)
def keep_top_p(z: np.ndarray, p: float) -> None:
    """Keep the smallest set of most likely entries of one row z (V,) whose probability reaches p."""
    if p >= 1.0:
        return
    order = np.argsort(-z, kind="mergesort")  # stable: ties keep their order
    probs = np.exp(z[order].astype(np.float64) - z[order[0]])
    probs /= probs.sum()
    ahead = 0.0  # probability mass strictly ahead of each entry
    for i in range(order.shape[0]):
        if i and ahead >= p:  # the likeliest entry is always kept, whatever p
            z[order[i]] = -np.inf
        ahead += probs[i]


# A stream's sampling rule as one row of numbers (``SamplingRule.args``), its columns:
TEMPERATURE, TOP_K, TOP_P, MIN_P, PRESENCE, FREQUENCY, REPETITION, WINDOW, LOGPROBS = range(9)
RULE_COLUMNS = 9


@numba.njit(**_JIT)
def keep_min_p(z: np.ndarray, min_p: float) -> None:
    """Keep the entries of z (V,), shifted so that its largest is 0, at least ``min_p`` times as
    likely as the likeliest."""
    if min_p > 0.0:
        cut = np.log(min_p)
        for v in range(z.shape[0]):
            if z[v] < cut:
                z[v] = -np.inf


@numba.njit(**_JIT)
def draw(logits: np.ndarray, rule: np.ndarray, bias: np.ndarray, written: np.ndarray, recent: np.ndarray,
         u: float, z: np.ndarray) -> int:  # fmt: skip
    """One id from a row of logits (V,) by ``rule`` (a row of RULE_COLUMNS numbers), in vLLM's
    order: the bias (-inf bans), the repetition penalty on the ids counted in ``recent``, presence
    and frequency penalties on the counts in ``written``, then temperature (0: the likeliest),
    top-k, top-p and min-p; u in (0, 1] picks it; z (V,) float64 scratch."""
    repetition, presence, frequency = rule[REPETITION], rule[PRESENCE], rule[FREQUENCY]
    for v in range(z.shape[0]):
        x = np.float64(logits[v]) + bias[v]
        if recent[v] > 0 and repetition != 1.0:
            x = x / repetition if x > 0 else x * repetition
        if written[v] > 0:
            x -= frequency * written[v] + presence
        z[v] = x
    temperature = rule[TEMPERATURE]
    if temperature == 0:
        return int(np.argmax(z))
    top = z.max()  # shifted to 0 before dividing, so a tiny temperature cannot overflow
    for v in range(z.shape[0]):
        z[v] = (z[v] - top) / temperature
    keep_top_k(z, int(rule[TOP_K]))
    keep_top_p(z, rule[TOP_P])
    keep_min_p(z, rule[MIN_P])
    acc = 0.0
    for v in range(z.shape[0]):  # cumulative probabilities (unnormalised), summed in order
        acc += np.exp(z[v])
        z[v] = acc
    target = u * acc  # u in (0, 1]: the last entry with any probability reaches it exactly
    for v in range(z.shape[0]):
        if z[v] >= target:
            return v
    return int(np.argmax(logits))  # only for NaN logits


@numba.njit(**_JIT)
def remember(token: int, window: int, ring: np.ndarray, at: np.ndarray, recent: np.ndarray) -> None:
    """A stream read or wrote ``token``: the last ``window`` tokens (ring, at = [next place, how
    many]) and their counts (recent, (V,)) move on."""
    if window <= 0:
        return
    place, held = at[0], at[1]
    if held == window:
        recent[ring[place]] -= 1
    else:
        at[1] = held + 1
    ring[place] = token
    recent[token] += 1
    at[0] = (place + 1) % window


@numba.njit(**_JIT)
def remember_all(tokens: np.ndarray, window: int, ring: np.ndarray, at: np.ndarray, recent: np.ndarray) -> None:
    """``remember`` each of ``tokens`` in order."""
    for token in tokens:
        remember(token, window, ring, at, recent)


@numba.njit(**_JIT)
def score(logits: np.ndarray, token: int, top_ids: np.ndarray, top_lp: np.ndarray) -> float:
    """The model's own log-probability of ``token`` under logits (V,) (no rule applied), and the
    ``len(top_ids)`` likeliest ids with theirs (ties in id order)."""
    top = logits.max()
    total = 0.0
    for v in range(logits.shape[0]):
        total += np.exp(np.float64(logits[v]) - top)
    norm = top + np.log(total)
    if top_ids.shape[0]:
        order = np.argsort(-logits, kind="mergesort")
        for i in range(top_ids.shape[0]):
            top_ids[i] = order[i]
            top_lp[i] = logits[order[i]] - norm
    return logits[token] - norm
