"""The per-character step: a time step of the model's cells (LSTM, GRU or peephole LSTM) for one
or many streams over weights arranged once for the compiled kernels (``kernels.py``),
numerically the same as the model's own forward pass.

- layer 0's embedding is folded into its input projection: a (V, 4H) table, so one row
  lookup replaces the embedding and a matrix product;
- deeper layers multiply ``[x | h]`` by ``[W_ih | W_hh]`` in one product;
- LSTM gate rows are reordered to (input, forget, output, cell) and the sigmoid rows (and
  peepholes) pre-scaled by 1/2, so ``tanh`` alone gives every activation:
  ``sigmoid(z) = (1 + tanh(z / 2)) / 2``; the GRU's rows become four blocks of H (reset,
  update, the candidate's input part, its recurrent part), so every cell reads 4H products;
- one stream generates a whole chunk of characters (step, draw, step, ...) in one compiled
  call; many streams share BLAS matrix products and compiled gate math.

The prompt is run once as a sequence through the model (:meth:`Stepper.prime`).
"""

from __future__ import annotations

from copy import deepcopy
from dataclasses import dataclass

import numpy as np
import torch

from charlstm.choices import STEP_PRECISIONS
from charlstm.net.model import CharLSTM, State
from charlstm.sampling import kernels

KernelRule = tuple[float, int, float]  # (temperature, top_k, top_p) as the kernels take them; 0 and 1.0 mean off


@dataclass
class StepState:
    """The running state of ``B`` streams, updated in place by :class:`Stepper`."""

    xh: np.ndarray  # (L, B, 2H): each layer's input then its own h (layer 0 uses only its h half)
    c: np.ndarray  # (L, B, H), or (L, B, 0) for the GRU
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


Arranged = tuple[np.ndarray, list[np.ndarray], list[np.ndarray], np.ndarray]  # table, matrices, biases, peep


def _arranged(model: CharLSTM) -> Arranged:
    """The step's weights, arranged once: the (V, 4H) input table of layer 0 (embedding, input
    projection and bias folded together), each layer's matrix ((4H, H) for layer 0, one (4H, 2H)
    over [x | h] above) then the head's (V, H), the biases of layers 1.. (4H,), and the peephole
    weights (L, 3, H) (zeros for the other cells). Sigmoid rows and peepholes are halved."""
    rows = _gru_rows if model.config.cell == "gru" else _lstm_rows
    layers = [rows(model, layer) for layer in range(model.config.layers)]  # (w_ih, w_hh, bias) each
    w_ih, w_hh, bias = layers[0]
    table = _np(model.embed.weight) @ w_ih.T + bias
    mats = [w_hh, *(np.concatenate([w_ih, w_hh], 1) for w_ih, w_hh, _ in layers[1:]), _np(model.head.weight)]
    return table, mats, [bias for _, _, bias in layers[1:]], _peepholes(model)


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
    character reads. One stream keeps fp32 arithmetic, so its step equals the forward pass on those
    rounded weights; many streams also round the products' inputs and outputs to bf16, as
    autocast does, to use the CPU's bf16 matrix units.
    """

    @torch.no_grad()
    def __init__(self, model: CharLSTM, precision: str = "fp32", threads: int | None = None):
        if precision not in STEP_PRECISIONS:  # of the weights the step reads; arithmetic is fp32 either way
            raise ValueError(f"precision must be one of {', '.join(STEP_PRECISIONS)}, not {precision!r}")
        if precision == "bf16":  # the prompt, too, is read with the rounded weights
            model = _with_step_weights_rounded(model)
        self.model, self.precision, h = model, precision, model.config.hidden
        table, mats, biases, peep = _arranged(model)
        bf16 = precision == "bf16"
        kernel = [_bf16_pairs(m) for m in mats] if bf16 else mats
        # Many streams: BLAS products in fp32, or torch's bf16 ones (oneDNN, AMX where present).
        self.mats = [torch.from_numpy(m).bfloat16() for m in mats] if bf16 else mats
        deeper = np.stack(kernel[1:-1]) if len(kernel) > 2 else np.empty((0, *kernel[0].shape[:1], h), kernel[0].dtype)
        biases_arr = np.stack(biases) if biases else np.empty((0, 4 * h), np.float32)
        arrays = (table, kernel[0], deeper, biases_arr, peep, kernel[-1], _np(model.head.bias))
        # What the kernels read, in one tuple: (kind, table, w0, deeper, biases, peep, head_w, head_b, threads).
        self.kind = KERNEL_CELLS[model.config.cell]
        threads = threads or kernels.threads()  # of one stream's matrix-vector products
        self.arrays = (self.kind, *(np.ascontiguousarray(a) for a in arrays), threads)

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
        hidden, b, layers = self.model.config.hidden, ids.shape[0], self.model.config.layers
        xh = np.zeros((layers, b, 2 * hidden), np.float32)
        xh[:, :, hidden:] = _np(state[0])
        xh[1:, :, :hidden] = xh[:-1, :, hidden:]
        c = _np(state[1]) if len(state) > 1 else np.zeros((layers, b, 0), np.float32)  # the GRU has no c
        scratch = np.empty((b, 4 * hidden), np.float32), np.empty(4 * hidden, np.float32)
        state = StepState(xh, c, *scratch, _np(logits[:, -1]))
        return state.logits.copy(), state

    def read(self, ids: list[int], start: State | None = None) -> StepState:
        """One stream reads ``ids`` a token at a time with the compiled step, from ``start`` (each
        (layers, 1, H)) or zeros: the state after them, whose logits are those of the last.
        Quicker than :meth:`prime` for a short prompt (no torch call to set up)."""
        cfg = self.model.config
        n, layers = cfg.hidden, cfg.layers
        xh = np.zeros((layers, 1, 2 * n), np.float32)
        c = np.zeros((layers, 1, 0 if cfg.cell == "gru" else n), np.float32)
        if start is not None:
            xh[:, :, n:] = _np(start[0])
            if c.shape[2]:
                c[:] = _np(start[1])
        s = StepState(xh, c, np.empty((1, 4 * n), np.float32), np.empty(4 * n, np.float32),
                      np.zeros((1, cfg.vocab_size), np.float32))  # fmt: skip
        for token in ids:
            kernels.advance(self.arrays, s.kernel_view(), int(token))
        return s

    def step(self, tokens: np.ndarray, s: StepState) -> np.ndarray:
        """tokens (B,) -> logits (B, V); ``s`` advances in place."""
        tokens = np.ascontiguousarray(tokens, dtype=np.int64)
        if len(tokens) == 1:
            kernels.advance(self.arrays, s.kernel_view(), tokens[0])
            return s.logits.copy()
        n, (kind, table, _, _, biases, peep, _, head_b, _) = self.model.config.hidden, self.arrays
        same_row, layers = np.zeros(len(tokens), np.int64), len(self.mats) - 1
        for layer in range(layers):
            x = s.xh[0, :, n:] if layer == 0 else s.xh[layer]  # (B, H) or (B, 2H)
            bias, rows = (table, tokens) if layer == 0 else (biases[layer - 1 : layer], same_row)
            gates = self._product(x, layer, s.gates)
            kernels.cells(kind, gates, bias, rows, peep[layer], s.c[layer], s.xh[layer], s.act)
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

    def draw_chunk(
        self, s: StepState, count: int, rule: KernelRule, rng: np.random.Generator, last: bool
    ) -> np.ndarray:
        """Draw ``count`` ids per stream from ``s.logits`` -> (B, count), reading each one into the
        state (the final one only if not ``last``). One stream: one compiled call; many: a step per
        position, all streams at once."""
        streams = s.logits.shape[0]
        ids = np.empty((streams, count), np.int64)
        if streams == 1:
            u = 1.0 - rng.random(count)  # in (0, 1]
            kernels.generate_chunk(self.arrays, s.kernel_view(), *rule, u, ids[0], not last)
            return ids
        for i in range(count):
            ids[:, i] = kernels.draw_rows(s.logits, *rule, 1.0 - rng.random(streams))
            if i + 1 < count or not last:
                self.step(ids[:, i], s)
        return ids
