"""Text generation: a compiled one-character step over pre-arranged weights, and the sampling
rules (temperature, top-k, top-p) on its logits.

Calling ``nn.LSTM`` once per character pays oneDNN's set-up on every call (about a
millisecond per layer on CPU), and even NumPy costs about a microsecond per call, so a
Python-level step (some 40 calls per character) spends more time in calls than in
arithmetic. The prompt is run once as a sequence through ``nn.LSTM``; after that
:class:`Stepper` advances the state with Numba-compiled kernels over weights it arranged once:

- layer 0's embedding is folded into its input projection: a (V, 4H) table, so one row
  lookup replaces the embedding and a matrix product;
- deeper layers multiply ``[x | h]`` by ``[W_ih | W_hh]`` in one product;
- gate rows are reordered to (input, forget, output, cell) and the sigmoid rows pre-scaled by
  1/2, so a single ``tanh`` over all 4H gates gives every activation:
  ``sigmoid(z) = (1 + tanh(z / 2)) / 2``;
- one stream generates a whole chunk of characters (step, sample, step, ...) in one
  compiled call; many streams share BLAS matrix products and compiled gate math.
"""

from __future__ import annotations

from collections.abc import Iterator
from copy import deepcopy
from dataclasses import dataclass

import numba
import numpy as np
import torch
from llvmlite import ir as llvm_ir
from numba.core import types
from numba.extending import intrinsic, overload

from charlstm.config import ModelConfig
from charlstm.corpus import CharVocab
from charlstm.errors import UserError
from charlstm.model import CharLSTM, State

CHUNK = 256  # characters one compiled call generates for one stream: text still streams out
PARALLEL_MIN = 1 << 16  # weights in a matrix-vector product worth splitting between threads
PRECISIONS = ("fp32", "bf16")  # of the weights the step reads; arithmetic is fp32 either way

# ----------------------------------------------------------------------------- compiled kernels
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
def _tanh(x: float) -> float:
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
def _f32_from_bits(typingctx, bits):  # noqa: ANN001, ARG001
    """Reinterpret a uint32 as the float32 with those bits (a bf16 shifted into the top half)."""

    def codegen(context, builder, signature, args):  # noqa: ANN001, ARG001
        return builder.bitcast(args[0], llvm_ir.FloatType())

    return types.float32(types.uint32), codegen


def _as_f32(v):  # noqa: ANN001, ANN201
    """A value as float32: float32 as it is, a bf16 (its uint16 bits) widened exactly."""


@overload(_as_f32, jit_options={"fastmath": True})
def _as_f32_impl(v):  # noqa: ANN001, ANN202
    if isinstance(v, types.Integer):
        return lambda v: _f32_from_bits(np.uint32(v) << _SHIFT)
    return lambda v: v


@numba.njit(inline="always", **_JIT)
def _dot_rows_f32(w: np.ndarray, x: np.ndarray, out: np.ndarray, first: int, last: int) -> None:
    for r in range(first, last):
        acc = _F(0)
        for k in range(w.shape[1]):
            acc += w[r, k] * x[k]
        out[r] = acc


@numba.njit(inline="always", **_JIT)
def _dot_rows_bf16(w: np.ndarray, xe: np.ndarray, xo: np.ndarray, out: np.ndarray, first: int, last: int) -> None:
    # Each uint32 of w holds two bf16 weights: column 2k in its low half, column 2k + 1 in its high
    # half. Widening both takes one mask and one shift, cheaper than widening each alone.
    for r in range(first, last):
        acc = _F(0)
        for k in range(w.shape[1]):
            pair = w[r, k]
            acc += _f32_from_bits(pair << _SHIFT) * xe[k] + _f32_from_bits(pair & _HIGH) * xo[k]
        out[r] = acc


# One stream is limited by reading the weights, not by arithmetic: each thread reads its own
# block of rows, so every core's cache and share of memory bandwidth is put to work.
@numba.njit(parallel=True, **_JIT)
def _gemv_f32(w: np.ndarray, x: np.ndarray, out: np.ndarray, threads: int) -> None:
    """out (R,) = w (R, K) @ x (K,)."""
    blocks = threads if w.size >= PARALLEL_MIN else 1  # (numba.get_num_threads() here would stop caching)
    for i in numba.prange(blocks):
        _dot_rows_f32(w, x, out, i * w.shape[0] // blocks, (i + 1) * w.shape[0] // blocks)


@numba.njit(parallel=True, **_JIT)
def _gemv_bf16(w: np.ndarray, xe: np.ndarray, xo: np.ndarray, out: np.ndarray, threads: int) -> None:
    """out (R,) = w @ x for w (R, ceil(K/2)) bf16 pairs and x split into even and odd columns."""
    blocks = threads if 2 * w.size >= PARALLEL_MIN else 1
    for i in numba.prange(blocks):
        _dot_rows_bf16(w, xe, xo, out, i * w.shape[0] // blocks, (i + 1) * w.shape[0] // blocks)


@numba.njit(**_JIT)
def _even_odd(x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """x (K,) -> its even and odd columns, each (ceil(K/2),); an odd K gets a 0 for the last odd."""
    half = (x.shape[0] + 1) // 2
    xe, xo = np.zeros(half, np.float32), np.zeros(half, np.float32)
    for k in range(x.shape[0]):
        if k % 2 == 0:
            xe[k // 2] = x[k]
        else:
            xo[k // 2] = x[k]
    return xe, xo


def _gemv(w, x, out, threads):  # noqa: ANN001, ANN202
    """out (R,) = w @ x (K,) for one stream; w is fp32 (R, K) or bf16 pairs (R, ceil(K/2)) uint32."""


@overload(_gemv)
def _gemv_impl(w, x, out, threads):  # noqa: ANN001, ANN202
    if w.dtype == types.uint32:

        def bf16(w, x, out, threads):  # noqa: ANN001, ANN202
            xe, xo = _even_odd(x)
            _gemv_bf16(w, xe, xo, out, threads)

        return bf16
    return lambda w, x, out, threads: _gemv_f32(w, x, out, threads)


@numba.njit(**_JIT)
def _cell(g: np.ndarray, bias: np.ndarray, c: np.ndarray, h: np.ndarray, act: np.ndarray) -> None:
    """One stream's gate math: pre-activations g (4H,) (fp32, or bf16 bits) + bias (4H,) -> new c
    and h (H,) in place; act (4H,) is scratch."""
    n = c.shape[0]
    for j in range(4 * n):
        act[j] = _tanh(_as_f32(g[j]) + bias[j])
    for j in range(n):
        i, f, o = _HALF * act[j] + _HALF, _HALF * act[n + j] + _HALF, _HALF * act[2 * n + j] + _HALF
        c[j] = f * c[j] + i * act[3 * n + j]
        h[j] = o * _tanh(c[j])


@numba.njit(**_JIT)
def _cells(g: np.ndarray, bias: np.ndarray, rows: np.ndarray, c: np.ndarray, xh: np.ndarray, act: np.ndarray) -> None:
    """``_cell`` for B streams: g (B, 4H); stream b adds bias[rows[b]]; c (B, H) and h, the right
    half of xh (B, 2H), are updated (sliced here, row by row, so that Numba knows them contiguous)."""
    n = c.shape[1]
    for b in range(g.shape[0]):
        _cell(g[b], bias[rows[b]], c[b], xh[b, n:], act)


@numba.njit(**_JIT)
def _advance(arrays: tuple, s: tuple, token: int) -> None:
    """Stream 0 reads ``token``: its state s = (xh, c, gates, act, logits) advances in place.

    ``arrays`` is (table, w0, deeper, biases, head_w, head_b, threads): see ``Stepper``."""
    table, w0, ws, biases, head_w, head_b, threads = arrays
    xh, c, g, act, logits = s
    n, gates = c.shape[2], g[0]
    _gemv(w0, xh[0, 0, n:], gates, threads)
    _cell(gates, table[token], c[0, 0], xh[0, 0, n:], act)
    for layer in range(1, xh.shape[0]):
        xh[layer, 0, :n] = xh[layer - 1, 0, n:]
        _gemv(ws[layer - 1], xh[layer, 0], gates, threads)
        _cell(gates, biases[layer - 1], c[layer, 0], xh[layer, 0, n:], act)
    _gemv(head_w, xh[-1, 0, n:], logits[0], threads)
    logits[0] += head_b


@numba.njit(**_JIT)
def _keep_top_k(z: np.ndarray, k: int) -> None:
    """Keep the ``k`` largest of one row z (V,) in place; the rest become -inf (ties are kept)."""
    if 0 < k < z.shape[0]:
        kth = np.sort(z)[z.shape[0] - k]
        for v in range(z.shape[0]):
            if z[v] < kth:
                z[v] = -np.inf


@numba.njit(**_JIT)
def _keep_top_p(z: np.ndarray, p: float) -> None:
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


@numba.njit(**_JIT)
def _draw(logits: np.ndarray, temperature: float, top_k: int, top_p: float, u: float, z: np.ndarray) -> int:
    """One id from a row of logits (V,); u in (0, 1] picks it; z (V,) float64 scratch."""
    if temperature == 0:
        return int(np.argmax(logits))
    top = logits.max()  # shifted to 0 before dividing, so a tiny temperature cannot overflow
    for v in range(z.shape[0]):
        z[v] = (logits[v] - top) / temperature
    _keep_top_k(z, top_k)
    _keep_top_p(z, top_p)
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
def _draw_rows(logits: np.ndarray, temperature: float, top_k: int, top_p: float, u: np.ndarray) -> np.ndarray:
    """``_draw`` for each row of logits (B, V) with its own u (B,) -> ids (B,)."""
    z, out = np.empty(logits.shape[1]), np.empty(logits.shape[0], np.int64)
    for b in range(logits.shape[0]):
        out[b] = _draw(logits[b], temperature, top_k, top_p, u[b], z)
    return out


@numba.njit(**_JIT)
def _generate(arrays, s, temperature, top_k, top_p, u, out, advance_last) -> None:  # noqa: ANN001
    """Stream 0 draws ``len(u)`` ids into ``out``, reading each one; the last only if ``advance_last``."""
    logits = s[-1]
    z = np.empty(logits.shape[1])
    for i in range(u.shape[0]):
        out[i] = _draw(logits[0], temperature, top_k, top_p, u[i], z)
        if i + 1 < u.shape[0] or advance_last:
            _advance(arrays, s, out[i])


# ----------------------------------------------------------------------------- the stepper
@dataclass
class StepState:
    """The running state of ``B`` streams, updated in place by :class:`Stepper`."""

    xh: np.ndarray  # (L, B, 2H): each layer's input then its own h (layer 0 uses only its h half)
    c: np.ndarray  # (L, B, H)
    gates: np.ndarray  # (B, 4H) scratch: pre-activations
    act: np.ndarray  # (4H,) scratch: activations of one stream
    logits: np.ndarray  # (B, V): of the latest step

    def kernel_view(self) -> tuple:
        return self.xh, self.c, self.gates, self.act, self.logits


def _np(t: torch.Tensor) -> np.ndarray:
    return np.ascontiguousarray(t.detach().float().cpu().numpy(), dtype=np.float32)


def _bf16_pairs(w: np.ndarray) -> np.ndarray:
    """fp32 (R, K) -> bfloat16 (round to nearest even, as torch does) as (R, ceil(K/2)) uint32,
    two neighbouring columns per element (an odd K gets a zero column)."""
    bits = torch.from_numpy(np.ascontiguousarray(w)).bfloat16().view(torch.int16).numpy().view(np.uint16)
    if bits.shape[1] % 2:
        bits = np.concatenate([bits, np.zeros((bits.shape[0], 1), np.uint16)], 1)
    return np.ascontiguousarray(bits).view(np.uint32)


@torch.no_grad()
def _with_step_weights_rounded(model: CharLSTM) -> CharLSTM:
    """A copy whose per-step matrices (recurrent, deeper input, head) are rounded to bfloat16."""
    copy = deepcopy(model)  # not a new CharLSTM: its initialisation would move torch's random state
    for name, p in copy.named_parameters():
        if name == "head.weight" or "weight_hh" in name or ("weight_ih" in name and not name.endswith("_l0")):
            p.copy_(p.bfloat16().float())
    return copy.eval()


def resolve_precision(requested: str, trained: str | None) -> str:
    """``auto`` samples in the precision the model trained in (bf16 autocast or fp32)."""
    if requested != "auto":
        return requested
    return "bf16" if trained == "bf16" else "fp32"


def _arranged(model: CharLSTM) -> tuple[np.ndarray, list[np.ndarray], list[np.ndarray]]:
    """The step's weights, arranged once: the (V, 4H) input table of layer 0, each layer's matrix
    ((4H, H) for layer 0, [W_ih | W_hh] (4H, 2H) above) then the head's (V, H), and the biases of
    layers 1.. (4H,). Gate rows go (i, f, g, o) -> (i, f, o, g), sigmoid rows pre-scaled by 1/2."""
    h, lstm = model.config.hidden, model.lstm
    order = np.r_[0 : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h]
    scale = np.where(np.arange(4 * h) < 3 * h, 0.5, 1.0).astype(np.float32)  # after reordering
    mats, biases, table = [], [], None
    for layer in range(model.config.layers):
        w_ih, w_hh = (_np(getattr(lstm, f"weight_{k}_l{layer}"))[order] * scale[:, None] for k in ("ih", "hh"))
        bias = (_np(getattr(lstm, f"bias_ih_l{layer}")) + _np(getattr(lstm, f"bias_hh_l{layer}")))[order] * scale
        if layer == 0:
            table, mats = _np(model.embed.weight) @ w_ih.T + bias, [w_hh]  # embedding, projection, bias
        else:
            biases.append(bias)
            mats.append(np.concatenate([w_ih, w_hh], 1))
    return table, [*mats, _np(model.head.weight)], biases


class Stepper:
    """One LSTM time step for ``B`` streams at a time, numerically the same as ``nn.LSTM``.

    ``precision="bf16"`` rounds the matrices read at every step (the recurrent and deeper
    weights and the head, not the embedding table) to bfloat16, halving the bytes that each
    character reads. One stream keeps fp32 arithmetic, so its step equals ``nn.LSTM`` on those
    rounded weights; many streams also round the products' inputs and outputs to bf16, as
    autocast does, to use the CPU's bf16 matrix units.
    """

    @torch.no_grad()
    def __init__(self, model: CharLSTM, precision: str = "fp32"):
        if precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, not {precision!r}")
        if precision == "bf16":  # the prompt, too, is read with the rounded weights
            model = _with_step_weights_rounded(model)
        self.model, self.precision, h = model, precision, model.config.hidden
        table, mats, biases = _arranged(model)
        bf16 = precision == "bf16"
        kernel = [_bf16_pairs(m) for m in mats] if bf16 else mats
        # Many streams: BLAS products in fp32, or torch's bf16 ones (oneDNN, AMX where present).
        self.mats = [torch.from_numpy(m).bfloat16() for m in mats] if bf16 else mats
        deeper = np.stack(kernel[1:-1]) if len(kernel) > 2 else np.empty((0, *kernel[0].shape[:1], h), kernel[0].dtype)
        biases_arr = np.stack(biases) if biases else np.empty((0, 4 * h), np.float32)
        arrays = (table, kernel[0], deeper, biases_arr, kernel[-1], _np(model.head.bias))
        # What the kernels read, in one tuple: (table, w0, deeper, biases, head_w, head_b, threads).
        self.arrays = (*(np.ascontiguousarray(a) for a in arrays), numba.get_num_threads())

    @torch.inference_mode()
    def prime(self, ids: torch.Tensor, start: State | None = None) -> tuple[np.ndarray, StepState]:
        """Run a prompt (B, T) once through the model, from ``start`` (each (layers, 1, H)) or zeros:
        logits of its last step (B, V) and the state."""
        was_training = self.model.training
        self.model.eval()
        device = self.model.head.weight.device
        if start is not None:
            start = tuple(t.to(device).expand(-1, ids.shape[0], -1).contiguous() for t in start)
        logits, (h, c) = self.model(ids.to(device), start)
        self.model.train(was_training)
        hidden, b = self.model.config.hidden, ids.shape[0]
        xh = np.zeros((self.model.config.layers, b, 2 * hidden), np.float32)
        xh[:, :, hidden:] = _np(h)
        xh[1:, :, :hidden] = xh[:-1, :, hidden:]
        scratch = np.empty((b, 4 * hidden), np.float32), np.empty(4 * hidden, np.float32)
        state = StepState(xh, _np(c), *scratch, _np(logits[:, -1]))
        return state.logits.copy(), state

    def step(self, tokens: np.ndarray, s: StepState) -> np.ndarray:
        """tokens (B,) -> logits (B, V); ``s`` advances in place."""
        tokens = np.asarray(tokens, dtype=np.int64)
        if len(tokens) == 1:
            _advance(self.arrays, s.kernel_view(), tokens[0])
            return s.logits.copy()
        n, (table, _, _, biases, _, head_b, _) = self.model.config.hidden, self.arrays
        same_row, layers = np.zeros(len(tokens), np.int64), len(self.mats) - 1
        for layer in range(layers):
            x = s.xh[0, :, n:] if layer == 0 else s.xh[layer]  # (B, H) or (B, 2H)
            bias, rows = (table, tokens) if layer == 0 else (biases[layer - 1 : layer], same_row)
            _cells(self._product(x, layer, s.gates), bias, rows, s.c[layer], s.xh[layer], s.act)
            if layer + 1 < layers:
                s.xh[layer + 1, :, :n] = s.xh[layer, :, n:]
        logits = self._product(s.xh[-1, :, n:], layers, s.logits)
        s.logits[:] = (logits.astype(np.uint32) << 16).view(np.float32) if logits.dtype == np.uint16 else logits
        s.logits += head_b
        return s.logits.copy()

    def _product(self, x: np.ndarray, i: int, out: np.ndarray) -> np.ndarray:
        """x (B, K) @ matrix i transposed: fp32 into ``out``, or a new bf16 result as uint16 bits."""
        if self.precision == "fp32":
            return np.matmul(x, self.mats[i].T, out=out)
        product = torch.from_numpy(x).bfloat16() @ self.mats[i].T  # (B, R) bf16
        return product.view(torch.int16).numpy().view(np.uint16)

    def generate_one(
        self, s: StepState, count: int, rule: SamplingRule, rng: np.random.Generator, last: bool
    ) -> np.ndarray:
        """Draw ``count`` ids for stream 0 from ``s.logits``, reading each one into the state
        (the final one only if not ``last``): one compiled call."""
        ids = np.empty(count, np.int64)
        u = 1.0 - rng.random(count)  # in (0, 1]
        _generate(self.arrays, s.kernel_view(), *rule.args(), u, ids, not last)
        return ids


# ----------------------------------------------------------------------------- sampling rules
@dataclass(frozen=True)
class SamplingRule:
    """Temperature (0 means greedy), top-k (None or 0: off) and top-p (None or 1: off)."""

    temperature: float
    top_k: int | None = None
    top_p: float | None = None

    def args(self) -> tuple[float, int, float]:
        top_k = min(int(self.top_k or 0), 1 << 31)  # any k past the vocabulary keeps everything
        return float(self.temperature), top_k, 1.0 if self.top_p is None else float(self.top_p)


def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest logits of each row (B, V); the rest become -inf."""
    out = np.array(logits, copy=True)
    for row in out:
        _keep_top_k(row, int(k))
    return out


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (nucleus)."""
    out = np.array(logits, copy=True)
    for row in out:
        _keep_top_p(row, float(p))
    return out


def next_tokens(
    logits: np.ndarray,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Draw one id per row of logits (B, V) -> (B,); temperature 0 is greedy (argmax)."""
    rng = rng if rng is not None else np.random.default_rng()
    u = 1.0 - rng.random(len(logits))  # in (0, 1]
    rule = SamplingRule(temperature, top_k, top_p)
    return _draw_rows(np.ascontiguousarray(logits, dtype=np.float32), *rule.args(), u)


# ----------------------------------------------------------------------------- generation
def prepare_prompt(vocab: CharVocab, prompt: str, unknown: str = "error") -> tuple[str, list[str]]:
    """The prompt to use and the characters dropped from it (``unknown="skip"``)."""
    missing = vocab.unknown(prompt)
    if missing and unknown != "skip":
        shown = ", ".join(repr(c) for c in missing[:10])
        raise UserError(
            f"--prompt has characters the model never saw: {shown}; use only characters of the "
            f"training text, or --unknown skip to drop them"
        )
    return "".join(c for c in prompt if c in vocab.index), missing


def priming_ids(vocab: CharVocab, prompt: str) -> list[int]:
    """Ids the model reads before generating: a newline (text starts on a fresh line), then the prompt."""
    newline = [vocab.index["\n"]] if "\n" in vocab.index and not prompt.startswith("\n") else []
    ids = newline + vocab.encode(prompt)
    return ids or [0]


def generate_ids(
    stepper: Stepper,
    prime: torch.Tensor,
    length: int,
    rule: SamplingRule,
    rng: np.random.Generator,
    start: State | None = None,
) -> Iterator[np.ndarray]:
    """Yield ids after reading ``prime`` (B, T): ``length`` in all, per stream. One stream gets
    chunks (n,) from a compiled loop; B streams get one (B,) array per position."""
    if length <= 0:
        return
    logits, state = stepper.prime(prime, start)
    if prime.shape[0] == 1:
        for begin in range(0, length, CHUNK):
            count = min(CHUNK, length - begin)
            yield stepper.generate_one(state, count, rule, rng, last=begin + count == length)
        return
    for i in range(length):
        tokens = next_tokens(logits, *rule.args(), rng=rng)
        yield tokens
        if i + 1 < length:
            logits = stepper.step(tokens, state)


def compile_kernels() -> None:
    """Compile everything sampling runs, in both precisions, for one stream and for many (or load
    it from Numba's on-disk cache, well under a second): about 12 s the first time on a 2-core CPU."""
    with torch.random.fork_rng(devices=[]):  # a run's random state must not move
        tiny = CharLSTM(ModelConfig(vocab_size=3, embedding=2, hidden=2, layers=2)).eval()
        rng, rule = np.random.default_rng(0), SamplingRule(1.0, 2, 0.9)
        for precision in PRECISIONS:
            for streams in (1, 2):
                list(generate_ids(Stepper(tiny, precision), torch.zeros(streams, 1, dtype=torch.long), 2, rule, rng))


def generate_texts(
    model: CharLSTM,
    vocab: CharVocab,
    prompt: str,
    length: int,
    count: int,
    rule: SamplingRule,
    rng: np.random.Generator,
    stepper: Stepper | None = None,
    start: State | None = None,
) -> Iterator[list[str]]:
    """``count`` samples continuing ``prompt`` (not repeated), drawn side by side: yields one
    piece of text per sample at a time, ``length`` characters per sample in all.

    ``start`` is the state the model reads the prompt from (see ``checkpoint.warm_state_of``).
    """
    stepper = stepper or Stepper(model)
    prime = torch.tensor([priming_ids(vocab, prompt)] * count, dtype=torch.long)
    chars = vocab.chars
    for ids in generate_ids(stepper, prime, length, rule, rng, start):
        yield ["".join(chars[i] for i in ids)] if count == 1 else [chars[i] for i in ids]


def generate(
    model: CharLSTM,
    vocab: CharVocab,
    prompt: str,
    length: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
    stepper: Stepper | None = None,
    start: State | None = None,
) -> Iterator[str]:
    """One sample continuing ``prompt`` (not repeated), a piece at a time: ``length`` characters in all."""
    rng = rng if rng is not None else np.random.default_rng()
    rule = SamplingRule(temperature, top_k, top_p)
    for pieces in generate_texts(model, vocab, prompt, length, 1, rule, rng, stepper, start):
        yield pieces[0]
