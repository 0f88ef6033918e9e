"""Compiled (Numba) code that steps streams: many streams that come and go, each with its own
sampling rule, stepped together (a server's slots, ``charlstm sample --num-samples``), and one
stream alone, its products split between threads. Every product element is computed by the same
code whatever the number of streams, their order or the threads, so that a stream's text depends
on nothing but itself (BLAS picks its kernels by the matrices' shapes, and rounds differently for
each).

A tile of four streams by two weight rows (fp32) or by one row of bf16 pairs reads each loaded
value more than once, which brings these products close to BLAS's speed. One stream runs the very
same tile with the roles swapped: four weight rows take the streams' places and the stream the
rows' (``_row_tiles_f32``, ``_tile_bf16_rows``: turned round, the bf16 tile leaves nothing of its
arithmetic unused); products commute, and the sum runs in the same order, so its numbers are bit
for bit those it would have among others, as long as the compiler vectorises both loops alike. It
does here, but that is the compiler's choice, so :func:`rows_match` checks it on the model's own
matrices and ``Slots`` steps a stream alone as a tile where it does not. Many streams take no
Python lock and start no threads (``Slots`` shares them out between threads of its own); one
stream's products are split between Numba's threads. (With ``kernels.py``, the only sampling code
that imports Numba.)
"""

from __future__ import annotations

import numba
import numpy as np
from numba.core import types
from numba.extending import overload

from charlstm.sampling.kernels import (
    _F,
    _HIGH,
    _JIT,
    _SHIFT,
    LOGPROBS,
    WINDOW,
    cell,
    draw,
    f32_from_bits,
    remember,
    score,
)

PARALLEL_MIN = 1 << 16  # weights in one stream's product worth splitting between threads

TILE_STREAMS = 4  # the number of streams stepped together is rounded up to this (zero rows fill it);
# one stream's matrices have a multiple of it rows (``Stepper`` pads the head with zero rows)
_TILE_ROWS_BLOCK = 16  # weight rows per thread's block: they stay in cache across the streams


@numba.njit(inline="always", **_JIT)
def _tile_f32(w: np.ndarray, x: np.ndarray, k0: int, out: np.ndarray, b: int, r: int, pair: bool) -> None:
    width = w.shape[1]
    u, v = w[r], w[r + 1 if pair else r]  # 1-D views indexed from 0: no index wrap-around in the loop
    x0, x1, x2, x3 = (
        x[b, k0 : k0 + width],
        x[b + 1, k0 : k0 + width],
        x[b + 2, k0 : k0 + width],
        x[b + 3, k0 : k0 + width],
    )
    a0, a1, a2, a3, c0, c1, c2, c3 = _F(0), _F(0), _F(0), _F(0), _F(0), _F(0), _F(0), _F(0)
    for k in range(width):
        a0 += u[k] * x0[k]
        a1 += u[k] * x1[k]
        a2 += u[k] * x2[k]
        a3 += u[k] * x3[k]
        c0 += v[k] * x0[k]
        c1 += v[k] * x1[k]
        c2 += v[k] * x2[k]
        c3 += v[k] * x3[k]
    out[b, r], out[b + 1, r], out[b + 2, r], out[b + 3, r] = a0, a1, a2, a3
    if pair:
        out[b, r + 1], out[b + 1, r + 1], out[b + 2, r + 1], out[b + 3, r + 1] = c0, c1, c2, c3


@numba.njit(inline="always", **_JIT)
def _tile_bf16(w: np.ndarray, xe: np.ndarray, xo: np.ndarray, out: np.ndarray, b: int, r: int) -> None:
    """Four streams by one row of bf16 pairs (columns 2k in each uint32's low half, 2k + 1 in its
    high half): the even columns and the odd ones summed apart, then added."""
    width = w.shape[1]
    p = w[r]
    e0, e1, e2, e3 = xe[b], xe[b + 1], xe[b + 2], xe[b + 3]  # the streams' even columns
    o0, o1, o2, o3 = xo[b], xo[b + 1], xo[b + 2], xo[b + 3]  # and odd ones
    a0, a1, a2, a3, c0, c1, c2, c3 = _F(0), _F(0), _F(0), _F(0), _F(0), _F(0), _F(0), _F(0)
    for k in range(width):
        ue, uo = f32_from_bits(p[k] << _SHIFT), f32_from_bits(p[k] & _HIGH)
        a0 += ue * e0[k]
        a1 += ue * e1[k]
        a2 += ue * e2[k]
        a3 += ue * e3[k]
        c0 += uo * o0[k]
        c1 += uo * o1[k]
        c2 += uo * o2[k]
        c3 += uo * o3[k]
    out[b, r], out[b + 1, r], out[b + 2, r], out[b + 3, r] = a0 + c0, a1 + c1, a2 + c2, a3 + c3


@numba.njit(inline="always", **_JIT)
def _tile_bf16_rows(se: np.ndarray, so: np.ndarray, w: np.ndarray, out: np.ndarray, b: int) -> None:
    """``_tile_bf16`` with the roles swapped: out[b + i] = w[b + i] . s for four rows of bf16 pairs
    w and one stream's even and odd columns se, so; each sum the same, in the same order."""
    width = w.shape[1]
    p0, p1, p2, p3 = w[b], w[b + 1], w[b + 2], w[b + 3]
    a0, a1, a2, a3, c0, c1, c2, c3 = _F(0), _F(0), _F(0), _F(0), _F(0), _F(0), _F(0), _F(0)
    for k in range(width):
        ue, uo = se[k], so[k]
        a0 += ue * f32_from_bits(p0[k] << _SHIFT)
        a1 += ue * f32_from_bits(p1[k] << _SHIFT)
        a2 += ue * f32_from_bits(p2[k] << _SHIFT)
        a3 += ue * f32_from_bits(p3[k] << _SHIFT)
        c0 += uo * f32_from_bits(p0[k] & _HIGH)
        c1 += uo * f32_from_bits(p1[k] & _HIGH)
        c2 += uo * f32_from_bits(p2[k] & _HIGH)
        c3 += uo * f32_from_bits(p3[k] & _HIGH)
    out[b], out[b + 1], out[b + 2], out[b + 3] = a0 + c0, a1 + c1, a2 + c2, a3 + c3


@numba.njit(**_JIT)
def _even_odd(x: np.ndarray, k0: int, width: int, first: int, last: int) -> tuple[np.ndarray, np.ndarray]:
    """Rows first..last of x, columns k0 + 2k and k0 + 2k + 1 for k < width, as two (rows, width)."""
    xe, xo = np.empty((last - first, width), np.float32), np.empty((last - first, width), np.float32)
    for b in range(last - first):
        row = x[first + b]
        for k in range(width):
            xe[b, k], xo[b, k] = row[k0 + 2 * k], row[k0 + 2 * k + 1]
    return xe, xo


@numba.njit(**_JIT)
def _tiles_f32(w: np.ndarray, x: np.ndarray, k0: int, out: np.ndarray, first: int, last: int) -> None:
    for r0 in range(0, w.shape[0], _TILE_ROWS_BLOCK):
        r1 = min(w.shape[0], r0 + _TILE_ROWS_BLOCK)
        for b in range(first, last, TILE_STREAMS):
            for r in range(r0, r1, 2):
                _tile_f32(w, x, k0, out, b, r, r + 1 < r1)


@numba.njit(**_JIT)
def _tiles_bf16(w: np.ndarray, x: np.ndarray, k0: int, out: np.ndarray, first: int, last: int) -> None:
    xe, xo = _even_odd(x, k0, w.shape[1], first, last)  # read whole, not in strided pairs
    part = out[first:last]
    for r0 in range(0, w.shape[0], _TILE_ROWS_BLOCK):
        r1 = min(w.shape[0], r0 + _TILE_ROWS_BLOCK)
        for b in range(0, last - first, TILE_STREAMS):
            for r in range(r0, r1):
                _tile_bf16(w, xe, xo, part, b, r)


def tiled_product(w, x, k0, out, first, last):  # noqa: ANN001, ANN201
    """out[first:last] = x[first:last, k0 : k0 + K] @ w.T for w fp32 (R, K) or bf16 pairs (R, K/2)
    (x then needs an even width past k0: ``Slots`` pads it); ``first`` and ``last`` multiples of
    TILE_STREAMS. Every element is the same sum in the same order whatever the range is."""


@overload(tiled_product)
def _tiled_product_impl(w, x, k0, out, first, last):  # noqa: ANN001, ANN202
    if w.dtype == types.uint32:
        return lambda w, x, k0, out, first, last: _tiles_bf16(w, x, k0, out, first, last)
    return lambda w, x, k0, out, first, last: _tiles_f32(w, x, k0, out, first, last)


@numba.njit(parallel=True, **_JIT)
def _row_tiles_f32(w: np.ndarray, s: np.ndarray, out: np.ndarray, threads: int, pair: bool) -> None:
    tiles, blocks = w.shape[0] // TILE_STREAMS, threads if w.size >= PARALLEL_MIN else 1
    for i in numba.prange(blocks):  # (numba.get_num_threads() here would stop caching)
        for t in range(tiles * i // blocks, tiles * (i + 1) // blocks):
            _tile_f32(s, w, 0, out, TILE_STREAMS * t, 0, pair)


@numba.njit(parallel=True, **_JIT)
def _row_tiles_bf16(w: np.ndarray, se: np.ndarray, so: np.ndarray, out: np.ndarray, threads: int) -> None:
    tiles, blocks = w.shape[0] // TILE_STREAMS, threads if 2 * w.size >= PARALLEL_MIN else 1
    for i in numba.prange(blocks):
        for t in range(tiles * i // blocks, tiles * (i + 1) // blocks):
            _tile_bf16_rows(se, so, w, out, TILE_STREAMS * t)


@numba.njit(**_JIT)
def _rows_f32(w: np.ndarray, x: np.ndarray, k0: int, out: np.ndarray, threads: int) -> None:
    s = np.empty((2, w.shape[1]), np.float32)  # the stream in both of a tile's rows
    s[0] = x[k0 : k0 + w.shape[1]]
    s[1] = s[0]
    t = np.empty((w.shape[0], 2), np.float32)
    _row_tiles_f32(w, s, t, threads, s.shape[0] == 2)  # a pair decided at run time, as in tiled_product
    out[: w.shape[0]] = t[:, 0]


@numba.njit(**_JIT)
def _rows_bf16(w: np.ndarray, x: np.ndarray, k0: int, out: np.ndarray, threads: int) -> None:
    se, so = np.empty(w.shape[1], np.float32), np.empty(w.shape[1], np.float32)
    for k in range(w.shape[1]):
        se[k], so[k] = x[k0 + 2 * k], x[k0 + 2 * k + 1]
    _row_tiles_bf16(w, se, so, out, threads)


def row_product(w, x, k0, out, threads):  # noqa: ANN001, ANN201
    """out[:R] = w @ x[k0 : k0 + K] for one stream x (w fp32 (R, K), or bf16 pairs (R, K/2) with x
    padded past k0 + K as for ``tiled_product``; R a multiple of TILE_STREAMS): each element the
    number ``tiled_product`` gives that stream. The rows are split between ``threads`` threads."""


@overload(row_product)
def _row_product_impl(w, x, k0, out, threads):  # noqa: ANN001, ANN202
    if w.dtype == types.uint32:
        return lambda w, x, k0, out, threads: _rows_bf16(w, x, k0, out, threads)
    return lambda w, x, k0, out, threads: _rows_f32(w, x, k0, out, threads)


@numba.njit(**_JIT)
def step_streams(arrays: tuple, xh: np.ndarray, c: np.ndarray, g: np.ndarray, act: np.ndarray,
                 logits: np.ndarray, tokens: np.ndarray, first: int, last: int) -> None:  # fmt: skip
    """Streams ``first`` to ``last`` (multiples of TILE_STREAMS) of xh (L, B, 2H) and c read
    ``tokens`` (B,): one step of every layer and the head into logits (B, V). No thread of its
    own and no Python lock: callers step disjoint ranges on threads of their own."""
    kind, table, w0, ws, biases, peep, head_w, head_b, _ = arrays
    n = xh.shape[2] // 2
    for layer in range(xh.shape[0]):
        x = xh[layer]
        if layer == 0:
            tiled_product(w0, x, n, g, first, last)
        else:
            x[first:last, :n] = xh[layer - 1, first:last, n : 2 * n]
            tiled_product(ws[layer - 1], x, 0, g, first, last)
        for b in range(first, last):
            bias = table[tokens[b]] if layer == 0 else biases[layer - 1]
            cell(kind, g[b], bias, peep[layer], c[layer, b], x[b, n : 2 * n], act)
    tiled_product(head_w, xh[xh.shape[0] - 1], n, logits, first, last)
    for b in range(first, last):
        logits[b] += head_b


@numba.njit(inline="always", **_JIT)
def _pick(b: int, j: int, logits: np.ndarray, rules: np.ndarray, history: tuple, u: float, z: np.ndarray,
          scores: tuple) -> int:  # fmt: skip
    """Stream b's j-th id of this call, drawn by its rule from its logits (V,), with its score if
    it asks for log-probabilities; its history moves on."""
    bias, written, recent, ring, at = history
    token = draw(logits, rules[b], bias[b], written[b], recent[b], u, z)
    asked = int(rules[b, LOGPROBS])
    if asked >= 0:
        lp, top_ids, top_lp = scores
        lp[b, j] = score(logits, token, top_ids[b, j, :asked], top_lp[b, j, :asked])
    written[b, token] += 1
    remember(token, int(rules[b, WINDOW]), ring[b], at[b], recent[b])
    return token


@numba.njit(**_JIT)
def run_streams(arrays: tuple, xh: np.ndarray, c: np.ndarray, g: np.ndarray, act: np.ndarray, logits: np.ndarray,
                tokens: np.ndarray, first: int, last: int, count: int, rules: np.ndarray, history: tuple,
                u: np.ndarray, start: np.ndarray, out: np.ndarray, scores: tuple) -> None:  # fmt: skip
    """``out.shape[1]`` tokens for each of streams ``first`` to ``last`` (those from ``count`` on
    are spare places, which read token 0): each draws by its rule with ``u[b, start[b] + j]``,
    then they all step on what they drew; and again."""
    vocab = arrays[1].shape[0]  # the head's rows past it are padding
    z = np.empty(vocab)
    for j in range(out.shape[1]):
        for b in range(first, min(last, count)):
            out[b, j] = _pick(b, j, logits[b, :vocab], rules, history, u[b, start[b] + j], z, scores)
            tokens[b] = out[b, j]
        step_streams(arrays, xh, c, g, act, logits, tokens, first, last)


@numba.njit(**_JIT)
def step_one(arrays: tuple, xh: np.ndarray, c: np.ndarray, g: np.ndarray, act: np.ndarray, logits: np.ndarray,
             token: int, b: int) -> None:  # fmt: skip
    """Stream ``b`` alone reads ``token``, as ``step_streams`` would step it, its products split
    between ``arrays``' threads."""
    kind, table, w0, ws, biases, peep, head_w, head_b, threads = arrays
    n = xh.shape[2] // 2
    for layer in range(xh.shape[0]):
        x = xh[layer, b]
        if layer == 0:
            row_product(w0, x, n, g[b], threads)
        else:
            x[:n] = xh[layer - 1, b, n : 2 * n]
            row_product(ws[layer - 1], x, 0, g[b], threads)
        bias = table[token] if layer == 0 else biases[layer - 1]
        cell(kind, g[b], bias, peep[layer], c[layer, b], x[n : 2 * n], act)
    row_product(head_w, xh[xh.shape[0] - 1, b], n, logits[b], threads)
    logits[b] += head_b


@numba.njit(**_JIT)
def run_one(arrays: tuple, xh: np.ndarray, c: np.ndarray, g: np.ndarray, act: np.ndarray, logits: np.ndarray,
            rules: np.ndarray, history: tuple, u: np.ndarray, start: int, out: np.ndarray,
            scores: tuple) -> None:  # fmt: skip
    """``run_streams`` for stream 0 alone, its products split between threads."""
    vocab = arrays[1].shape[0]
    z = np.empty(vocab)
    for j in range(out.shape[1]):
        out[0, j] = _pick(0, j, logits[0, :vocab], rules, history, u[0, start + j], z, scores)
        step_one(arrays, xh, c, g, act, logits, out[0, j], 0)


@numba.njit(**_JIT)
def rows_match(w: np.ndarray, x: np.ndarray, threads: int) -> bool:
    """Whether ``row_product`` gives each stream of x (TILE_STREAMS, K + 1) exactly the numbers of
    ``tiled_product`` over w."""
    tiles, one = np.zeros((x.shape[0], w.shape[0]), np.float32), np.zeros(w.shape[0], np.float32)
    tiled_product(w, x, 0, tiles, 0, x.shape[0])
    for b in range(x.shape[0]):
        row_product(w, x[b], 0, one, threads)
        for r in range(w.shape[0]):
            if one[r] != tiles[b, r]:
                return False
    return True
