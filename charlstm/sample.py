"""Text generation: a fast one-character step over pre-arranged weights, and the sampling rules
(temperature, top-k, top-p) on its logits.

Calling ``nn.LSTM`` once per character pays oneDNN's set-up on every call (about a
millisecond per layer on CPU), and even hand-written torch ops cost microseconds each in
dispatch. The prompt is run once as a sequence through ``nn.LSTM``; after that
:class:`Stepper` advances the state in NumPy, with in-place ufuncs on buffers it allocates
once and weights it arranged once:

- layer 0's embedding is folded into its input projection: a (V, 4H) table, so one row
  lookup replaces the embedding and a matrix product;
- deeper layers multiply ``[x | h]`` by ``[W_ih | W_hh]`` in one product;
- gate rows are reordered to (input, forget, output, cell) and the sigmoid rows pre-scaled by
  1/2, so a single ``tanh`` over all 4H gates gives every activation:
  ``sigmoid(z) = (1 + tanh(z / 2)) / 2``.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np
import torch

from charlstm.corpus import CharVocab
from charlstm.errors import UserError
from charlstm.model import CharLSTM, State


@dataclass
class StepState:
    """The running state of ``B`` streams, updated in place by :meth:`Stepper.step`."""

    xh: list[np.ndarray]  # per layer (B, in + H): the layer's input then its own h (layer 0: h only)
    c: list[np.ndarray]  # per layer (B, H)
    gates: np.ndarray  # (B, 4H) scratch
    tmp: np.ndarray  # (B, H) scratch


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().float().cpu().numpy().astype(np.float32)


class Stepper:
    """One LSTM time step for ``B`` streams at a time, numerically the same as ``nn.LSTM``."""

    @torch.no_grad()
    def __init__(self, model: CharLSTM):
        self.model, h = model, model.config.hidden
        self.hidden, lstm = h, model.lstm
        order = np.r_[0 : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h]  # (i, f, g, o) -> (i, f, o, g)
        scale = np.where(np.arange(4 * h) < 3 * h, 0.5, 1.0).astype(np.float32)[:, None]  # after reordering
        self.weights: list[np.ndarray] = []  # layer 0: W_hh (4H, H); others: [W_ih | W_hh] (4H, 2H)
        self.biases: list[np.ndarray] = []  # layer 0: the (V, 4H) table; others: (4H,)
        for layer in range(model.config.layers):
            w_ih, w_hh = (_np(getattr(lstm, f"weight_{k}_l{layer}"))[order] * scale for k in ("ih", "hh"))
            bias = (_np(getattr(lstm, f"bias_ih_l{layer}")) + _np(getattr(lstm, f"bias_hh_l{layer}")))[order]
            bias = bias * scale[:, 0]
            if layer == 0:
                self.biases.append(np.ascontiguousarray(_np(model.embed.weight) @ w_ih.T + bias))
                self.weights.append(np.ascontiguousarray(w_hh))
            else:
                self.biases.append(np.ascontiguousarray(bias))
                self.weights.append(np.ascontiguousarray(np.concatenate([w_ih, w_hh], 1)))
        self.head_w, self.head_b = _np(model.head.weight), _np(model.head.bias)  # (V, H), (V,)

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
        b, width = ids.shape[0], self.hidden
        xh = [np.zeros((b, width if i == 0 else 2 * width), np.float32) for i in range(len(self.weights))]
        for i, buf in enumerate(xh):
            buf[:, -width:] = _np(h[i])
            if i:
                buf[:, :width] = _np(h[i - 1])
        state = StepState(
            xh,
            [_np(c[i]).copy() for i in range(len(xh))],
            np.empty((b, 4 * width), np.float32),
            np.empty((b, width), np.float32),
        )
        return _np(logits[:, -1]), state

    def step(self, tokens: np.ndarray, s: StepState) -> np.ndarray:
        """tokens (B,) -> logits (B, V); ``s`` advances in place."""
        h, g = self.hidden, s.gates
        for layer, (w, xh, c) in enumerate(zip(self.weights, s.xh, s.c, strict=True)):
            if len(tokens) == 1:
                np.dot(w, xh[0], out=g[0])  # matrix-vector: the fastest BLAS call for one stream
            else:
                np.matmul(xh, w.T, out=g)  # (B, 4H)
            g += self.biases[0][tokens] if layer == 0 else self.biases[layer]
            np.tanh(g, out=g)
            sig = g[:, : 3 * h]
            sig *= 0.5
            sig += 0.5  # input, forget, output gates; g[:, 3H:] is the cell candidate
            c *= g[:, h : 2 * h]
            np.multiply(g[:, :h], g[:, 3 * h :], out=s.tmp)
            c += s.tmp
            np.tanh(c, out=s.tmp)
            out = xh[:, -h:]
            np.multiply(g[:, 2 * h : 3 * h], s.tmp, out=out)  # the new h, in place for the next step
            if layer + 1 < len(s.xh):
                s.xh[layer + 1][:, :h] = out
        top = s.xh[-1][:, -h:]
        if len(tokens) == 1:
            return (np.dot(self.head_w, top[0]) + self.head_b)[None]
        return top @ self.head_w.T + self.head_b


# ----------------------------------------------------------------------------- sampling rules
def top_k_filter(logits: np.ndarray, k: int) -> np.ndarray:
    """Keep the ``k`` largest logits of each row (B, V); the rest become -inf."""
    v = logits.shape[-1]
    if k <= 0 or k >= v:
        return logits
    kth = np.partition(logits, v - k, axis=-1)[:, v - k : v - k + 1]  # (B, 1)
    return np.where(logits < kth, -np.inf, logits)


def top_p_filter(logits: np.ndarray, p: float) -> np.ndarray:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (nucleus)."""
    if p >= 1.0:
        return logits
    order = np.argsort(-logits, axis=-1, kind="stable")
    ranked = np.take_along_axis(logits, order, -1).astype(np.float64)
    probs = np.exp(ranked - ranked[:, :1])
    probs /= probs.sum(-1, keepdims=True)
    before = np.cumsum(probs, -1) - probs  # probability mass strictly ahead of each token
    drop = np.empty_like(before, dtype=bool)
    np.put_along_axis(drop, order, before >= p, -1)  # the top token has 0 ahead of it: always kept
    return np.where(drop, -np.inf, logits)


def next_tokens(
    logits: np.ndarray,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
) -> np.ndarray:
    """Draw one id per row of logits (B, V) -> (B,); temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    rng = rng if rng is not None else np.random.default_rng()
    # Shift the maximum to 0 before dividing, so a tiny temperature cannot overflow to inf.
    with np.errstate(over="ignore"):  # far below the maximum at a tiny temperature: -inf, probability 0
        z = (logits - logits.max(-1, keepdims=True)) / temperature
    if top_k:
        z = top_k_filter(z, top_k)
    if top_p is not None:
        z = top_p_filter(z, top_p)
    cdf = np.cumsum(np.exp(z), -1)  # unnormalised
    u = (1.0 - rng.random(len(z)))[:, None] * cdf[:, -1:]  # uniform in (0, total]
    return np.minimum((cdf < u).sum(-1), z.shape[-1] - 1)  # first id whose cdf reaches u


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
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    rng: np.random.Generator | None = None,
    start: State | None = None,
) -> Iterator[np.ndarray]:
    """Yield ``length`` arrays of ids (B,), one per generated position, after reading ``prime`` (B, T)."""
    if length <= 0:
        return
    logits, state = stepper.prime(prime, start)
    for i in range(length):
        tokens = next_tokens(logits, temperature, top_k, top_p, rng)
        yield tokens
        if i + 1 < length:
            logits = stepper.step(tokens, state)


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
    """Yield generated characters one at a time, continuing ``prompt`` (not repeated).

    ``start`` is the state the model reads the prompt from (see ``checkpoint.warm_state_of``).
    """
    stepper = stepper or Stepper(model)
    prime = torch.tensor([priming_ids(vocab, prompt)], dtype=torch.long)
    chars = vocab.chars
    for tokens in generate_ids(stepper, prime, length, temperature, top_k, top_p, rng, start):
        yield chars[tokens[0]]
