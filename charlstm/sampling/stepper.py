"""The per-character step: a time step of the model's cells (LSTM, GRU or peephole LSTM) over
weights arranged once for the compiled kernels (``slot_kernels.py``), numerically the same as the
model's own forward pass.

- layer 0's embedding is folded into its input projection: a (V, 4H) table, so one row
  lookup replaces the embedding and a matrix product;
- deeper layers multiply ``[x | h]`` by ``[W_ih | W_hh]`` in one product;
- LSTM gate rows are reordered to (input, forget, output, cell) and the sigmoid rows (and
  peepholes) pre-scaled by 1/2, so ``tanh`` alone gives every activation:
  ``sigmoid(z) = (1 + tanh(z / 2)) / 2``; the GRU's rows become four blocks of H (reset,
  update, the candidate's input part, its recurrent part), so every cell reads 4H products;
- the head gets zero rows up to a multiple of ``TILE_STREAMS`` (the logits past the vocabulary
  are never drawn).

``Slots`` steps streams over these weights, a whole chunk of characters per compiled call. A
prompt is read by that same step, or, past ``READ_LIMIT`` characters, run once as a sequence
through the model (:meth:`Stepper.start`): whoever draws, the same prompt gives the same state.
"""

from __future__ import annotations

import functools
from copy import deepcopy
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
import torch

from charlstm.choices import STEP_PRECISIONS
from charlstm.net.model import CharLSTM, State
from charlstm.sampling import kernels, slot_kernels
from charlstm.sampling.slot_kernels import TILE_STREAMS

READ_LIMIT = 256  # a prompt up to this many tokens is read a step at a time; a longer one in one forward pass


@dataclass
class StepState:
    """The running state of ``B`` streams, updated in place by :class:`Stepper`."""

    xh: np.ndarray  # (L, B, 2H + 1): each layer's input, its own h, a zero (bf16 pairs read h in pairs)
    c: np.ndarray  # (L, B, H), or (L, B, 0) for the GRU
    gates: np.ndarray  # (B, 4H) scratch: pre-activations
    act: np.ndarray  # (4H,) scratch: activations of one stream
    logits: np.ndarray  # (B, V rounded up to TILE_STREAMS): of the latest step (the padding is not a character)

    @classmethod
    def zeros(cls, layers: int, streams: int, hidden: int, vocab: int, gru: bool) -> StepState:
        return cls(
            np.zeros((layers, streams, 2 * hidden + 1), np.float32),
            np.zeros((layers, streams, 0 if gru else hidden), np.float32),
            np.zeros((streams, 4 * hidden), np.float32),
            np.zeros(4 * hidden, np.float32),
            np.zeros((streams, _padded(vocab)), np.float32),
        )

    def kernel_view(self) -> tuple:
        return self.xh, self.c, self.gates, self.act, self.logits


def _padded(rows: int) -> int:
    return -(-rows // TILE_STREAMS) * TILE_STREAMS


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
def rounded_for(model: CharLSTM, precision: str) -> CharLSTM:
    """The model whose weights a step of ``precision`` reads: ``model`` itself for fp32; for bf16 a
    copy whose per-step matrices (recurrent, deeper input, head) are rounded to bfloat16."""
    if precision not in STEP_PRECISIONS:  # of the weights the step reads; arithmetic is fp32 either way
        raise ValueError(f"precision must be one of {', '.join(STEP_PRECISIONS)}, not {precision!r}")
    if precision != "bf16":
        return model
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


class Arranged(NamedTuple):
    """The step's weights, arranged once (for the compiled kernels, and for the exported page's step).
    Sigmoid rows and peepholes are halved."""

    table: np.ndarray  # (V, 4H): layer 0's input table (embedding, input projection and bias folded together)
    mats: list[np.ndarray]  # (4H, H) for layer 0, (4H, 2H) over [x | h] for each above, then the head (V, H)
    biases: list[np.ndarray]  # of layers 1.., (4H,) each
    peep: np.ndarray  # (L, 3, H): the peephole weights (zeros for the other cells)
    head_bias: np.ndarray  # (V,)


def arranged(model: CharLSTM) -> Arranged:
    """``model``'s weights as the step reads them (pass it through :func:`rounded_for` first)."""
    rows = _gru_rows if model.config.cell == "gru" else _lstm_rows
    layers = [rows(model, layer) for layer in range(model.config.layers)]  # (w_ih, w_hh, bias) each
    w_ih, w_hh, bias = layers[0]
    table = _np(model.embed.weight) @ w_ih.T + bias
    mats = [w_hh, *(np.concatenate([w_ih, w_hh], 1) for w_ih, w_hh, _ in layers[1:]), _np(model.head.weight)]
    return Arranged(table, mats, [bias for _, _, bias in layers[1:]], _peepholes(model), _np(model.head.bias))


def _lstm_rows(model: CharLSTM, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(W_ih (4H, in), W_hh (4H, H), bias (4H,)) with gate rows (i, f, g, o) -> (i, f, o, g), the
    three sigmoid gates' rows halved."""
    h, rnn = model.config.hidden, model.rnn
    order = np.r_[0 : 2 * h, 3 * h : 4 * h, 2 * h : 3 * h]
    scale = np.where(np.arange(4 * h) < 3 * h, 0.5, 1.0).astype(np.float32)[:, None]  # after reordering
    w_ih, w_hh = (_np(getattr(rnn, f"weight_{k}_l{layer}"))[order] * scale for k in ("ih", "hh"))
    bias = (_np(getattr(rnn, f"bias_ih_l{layer}")) + _np(getattr(rnn, f"bias_hh_l{layer}")))[order] * scale[:, 0]
    return w_ih, w_hh, bias


def _gru_rows(model: CharLSTM, layer: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """``nn.GRU``'s (r, z, n) rows as four blocks of H: reset and update (halved, input and
    recurrent parts summed by the product over [x | h]), then the candidate's input part
    (W_in, b_in) and recurrent part (W_hn, b_hn), each with zeros where it reads the other."""
    h, rnn = model.config.hidden, model.rnn
    w_ih, w_hh = (_np(getattr(rnn, f"weight_{k}_l{layer}")) for k in ("ih", "hh"))
    b_ih, b_hh = (_np(getattr(rnn, f"bias_{k}_l{layer}")) for k in ("ih", "hh"))
    gates = slice(0, 2 * h)
    w_x = np.concatenate([w_ih[gates] * 0.5, w_ih[2 * h :], np.zeros((h, w_ih.shape[1]), np.float32)])
    w_h = np.concatenate([w_hh[gates] * 0.5, np.zeros((h, h), np.float32), w_hh[2 * h :]])
    bias = np.concatenate([(b_ih[gates] + b_hh[gates]) * 0.5, b_ih[2 * h :], b_hh[2 * h :]])
    return w_x, w_h, bias


def _peepholes(model: CharLSTM) -> np.ndarray:
    """(L, 3, H): p_i, p_f, p_o of each layer, halved like the sigmoid rows; zeros without peepholes."""
    cfg = model.config
    if cfg.cell != "peephole":
        return np.zeros((cfg.layers, 3, cfg.hidden), np.float32)
    return np.stack([_np(getattr(model.rnn, f"peep_l{layer}")) * 0.5 for layer in range(cfg.layers)])


KERNEL_CELLS = {"lstm": kernels.LSTM, "gru": kernels.GRU, "peephole": kernels.PEEPHOLE}


class Stepper:
    """One time step of the model's cells for ``B`` streams at a time, numerically the same as
    its forward pass.

    ``precision="bf16"`` rounds the matrices read at every step (the recurrent and deeper
    weights and the head, not the embedding table) to bfloat16, halving the bytes that each
    character reads; the arithmetic stays fp32, so the step equals the forward pass on those
    rounded weights.
    """

    @torch.no_grad()
    def __init__(self, model: CharLSTM, precision: str = "fp32", threads: int | None = None):
        model = rounded_for(model, precision)  # the prompt, too, is read with the rounded weights
        self.model, self.precision, h = model, precision, model.config.hidden
        table, mats, biases, peep, head_bias = arranged(model)
        bf16 = precision == "bf16"
        head = np.zeros((_padded(mats[-1].shape[0]), h), np.float32)
        head[: mats[-1].shape[0]] = mats[-1]
        kernel = [_bf16_pairs(m) for m in (*mats[:-1], head)] if bf16 else [*mats[:-1], head]
        deeper = np.stack(kernel[1:-1]) if len(kernel) > 2 else np.empty((0, *kernel[0].shape[:1], h), kernel[0].dtype)
        biases_arr = np.stack(biases) if biases else np.empty((0, 4 * h), np.float32)
        head_b = np.zeros(head.shape[0], np.float32)
        head_b[: mats[-1].shape[0]] = head_bias
        arrays = (table, kernel[0], deeper, biases_arr, peep, kernel[-1], head_b)
        # What the kernels read, in one tuple: (kind, table, w0, deeper, biases, peep, head_w, head_b, threads).
        self.kind = KERNEL_CELLS[model.config.cell]
        threads = threads or kernels.threads()  # of one stream's products
        self.arrays = (self.kind, *(np.ascontiguousarray(a) for a in arrays), threads)

    @functools.cached_property
    def rows_match(self) -> bool:
        """Whether a stream alone, its products split by rows, gets the numbers it would get in a
        tile among others, on this CPU (see ``slot_kernels``): checked once on every matrix."""
        _, _, w0, deeper, _, _, head_w, _, threads = self.arrays
        rng = np.random.default_rng(0)
        for w in (w0, *deeper, head_w):
            columns = w.shape[1] * (2 if w.dtype == np.uint32 else 1)
            x = rng.standard_normal((TILE_STREAMS, columns + 1)).astype(np.float32)
            if not slot_kernels.rows_match(w, x, threads):
                return False
        return True

    def state(self, streams: int) -> StepState:
        """A zero state of ``streams`` streams."""
        cfg = self.model.config
        return StepState.zeros(cfg.layers, streams, cfg.hidden, cfg.vocab_size, cfg.cell == "gru")

    @torch.inference_mode()
    def prime(self, ids: torch.Tensor, start: State | None = None) -> tuple[np.ndarray, StepState]:
        """Run a prompt (B, T) once through the model, from ``start`` (each (layers, 1, H)) or zeros:
        logits of its last step (B, V) and the state."""
        was_training = self.model.training
        self.model.eval()
        device = self.model.head.weight.device
        if start is not None:
            start = tuple(t.to(device).expand(-1, ids.shape[0], -1).contiguous() for t in start)
        logits, state = self.model(ids.to(device), start)
        self.model.train(was_training)
        hidden, vocab = self.model.config.hidden, self.model.config.vocab_size
        s = self.state(ids.shape[0])
        s.xh[:, :, hidden : 2 * hidden] = _np(state[0])
        s.xh[1:, :, :hidden] = s.xh[:-1, :, hidden : 2 * hidden]
        if len(state) > 1:  # the GRU has no c
            s.c[:] = _np(state[1])
        s.logits[:, :vocab] = _np(logits[:, -1])
        return s.logits[:, :vocab].copy(), s

    def read(self, ids: list[int], start: State | None = None) -> StepState:
        """One stream reads ``ids`` a token at a time with the compiled step, from ``start`` (each
        (layers, 1, H)) or zeros: the state after them, whose logits are those of the last.
        Quicker than :meth:`prime` for a short prompt (no torch call to set up)."""
        n, s = self.model.config.hidden, self.state(1)
        if start is not None:
            s.xh[:, :, n : 2 * n] = _np(start[0])
            if s.c.shape[2]:
                s.c[:] = _np(start[1])
            s.xh[1:, :, :n] = s.xh[:-1, :, n : 2 * n]
        for token in ids:
            slot_kernels.step_one(self.arrays, *s.kernel_view(), int(token), 0)
        return s

    def start(self, ids: list[int], start: State | None = None) -> StepState:
        """One stream's state after reading a prompt, as every surface primes it: a step at a time
        up to ``READ_LIMIT`` tokens, else in one forward pass."""
        if len(ids) <= READ_LIMIT:
            return self.read(ids, start)
        return self.prime(torch.tensor([ids]), start)[1]

    def step(self, token: int, s: StepState) -> np.ndarray:
        """Stream 0 of ``s`` reads ``token``, in place: its logits (V,)."""
        slot_kernels.step_one(self.arrays, *s.kernel_view(), int(token), 0)
        return s.logits[0, : self.model.config.vocab_size].copy()
