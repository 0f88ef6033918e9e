"""The peephole LSTM of the gate equations (Gers & Schmidhuber), in which the input and forget
gates also read the previous cell state and the output gate reads the new one:

    i = sigmoid(W_i [x, h] + b_i + p_i * c(t-1))     f = sigmoid(W_f [x, h] + b_f + p_f * c(t-1))
    g = tanh(W_g [x, h] + b_g)                        c(t) = f * c(t-1) + i * g
    o = sigmoid(W_o [x, h] + b_o + p_o * c(t))        h(t) = o * tanh(c(t))

Each layer is one autograd function over a whole chunk, with its backward pass through time
written out: autograd over a Python loop of small ops spent most of its time in per-op
bookkeeping (each ``projected[t]`` even wrote a whole (T, B, 4H) gradient), while here the
input projection and the recurrent weight gradient are each a single matrix product over all
steps, and only ``h @ W_hh`` and its transpose run once per step.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from charlstm.net.dropout import locked_dropout


class PeepholeLSTM(nn.Module):
    """A stacked, time-major peephole LSTM. Weights are named and laid out as ``nn.LSTM``'s
    (gates i, f, g, o), with ``peep_l{k}`` (3, H) holding p_i, p_f, p_o."""

    def __init__(self, input_size: int, hidden: int, layers: int, dropout: float):
        super().__init__()
        self.hidden, self.layers, self.dropout = hidden, layers, dropout
        bound = 1 / math.sqrt(hidden)  # nn.LSTM's initialisation
        for k in range(layers):
            inputs = input_size if k == 0 else hidden
            for name, shape in [
                (f"weight_ih_l{k}", (4 * hidden, inputs)),
                (f"weight_hh_l{k}", (4 * hidden, hidden)),
                (f"bias_ih_l{k}", (4 * hidden,)),
                (f"bias_hh_l{k}", (4 * hidden,)),
                (f"peep_l{k}", (3, hidden)),
            ]:
                self.register_parameter(name, nn.Parameter(torch.empty(shape).uniform_(-bound, bound)))

    def forward(
        self, x: torch.Tensor, state: tuple[torch.Tensor, ...] | None = None
    ) -> tuple[torch.Tensor, tuple[torch.Tensor, torch.Tensor]]:
        """x (T, B, in) -> outputs (T, B, H) and the state (h, c), each (layers, B, H)."""
        if state is None:
            zeros = x.new_zeros(self.layers, x.shape[1], self.hidden, dtype=torch.float32)
            state = (zeros, zeros)
        hs, cs = [], []
        for k in range(self.layers):
            if k and self.training:
                x = locked_dropout(x, self.dropout)  # one mask per stream, the same at every step
            w_ih, w_hh = getattr(self, f"weight_ih_l{k}"), getattr(self, f"weight_hh_l{k}")
            bias = getattr(self, f"bias_ih_l{k}") + getattr(self, f"bias_hh_l{k}")
            projected = F.linear(x, w_ih, bias).float()  # (T, B, 4H): every step's input part at once
            peep = getattr(self, f"peep_l{k}")
            x, h, c = PeepholeLayer.apply(projected, w_hh, peep, state[0][k].float(), state[1][k].float())
            hs.append(h)
            cs.append(c)
        return x, (torch.stack(hs), torch.stack(cs))


def _matmul_dtype(t: torch.Tensor) -> torch.dtype:
    """The dtype the recurrent products run in: autocast's where it is on (bf16 on CPU), else t's."""
    device = t.device.type
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else t.dtype


class PeepholeLayer(torch.autograd.Function):
    """One layer over a chunk: projected (T, B, 4H) fp32 (input part and both biases), w_hh
    (4H, H), peep (3, H), h0 and c0 (B, H) -> outputs (T, B, H), final h and c (B, H).

    Products run in autocast's dtype (weights cast once per chunk); gate arithmetic in fp32."""

    @staticmethod
    def forward(ctx, projected, w_hh, peep, h0, c0):  # noqa: ANN001, ANN205 - autograd's signature
        dtype = _matmul_dtype(projected)
        with torch.autocast(projected.device.type, enabled=False):
            w_t, p_i, p_f, p_o = w_hh.t().to(dtype), *peep.to(projected.dtype).unbind(0)
            steps = projected.shape[0]
            gates = torch.empty_like(projected)  # (T, B, 4H): i, f, g, o after their activations
            hs = projected.new_empty(steps + 1, *h0.shape)  # h(t-1) for each step, then the last h
            cs = projected.new_empty(steps + 1, *c0.shape)  # c(t-1) likewise
            hs[0], cs[0] = h0, c0
            for t in range(steps):
                z_i, z_f, z_g, z_o = (projected[t] + (hs[t].to(dtype) @ w_t).to(projected.dtype)).chunk(4, 1)
                i, f, g, o = gates[t].chunk(4, 1)
                torch.sigmoid(torch.addcmul(z_i, p_i, cs[t]), out=i)
                torch.sigmoid(torch.addcmul(z_f, p_f, cs[t]), out=f)
                torch.tanh(z_g, out=g)
                torch.addcmul(f * cs[t], i, g, out=cs[t + 1])
                torch.sigmoid(torch.addcmul(z_o, p_o, cs[t + 1]), out=o)
                torch.mul(o, torch.tanh(cs[t + 1]), out=hs[t + 1])
        ctx.save_for_backward(w_hh, peep, gates, hs, cs)
        ctx.dtype = dtype
        return hs[1:].clone(), hs[-1].clone(), cs[-1].clone()

    @staticmethod
    def backward(ctx, d_out, d_h, d_c):  # noqa: ANN001, ANN205 - autograd's signature
        w_hh, peep, gates, hs, cs = ctx.saved_tensors
        dtype, (p_i, p_f, p_o) = ctx.dtype, peep.to(gates.dtype).unbind(0)
        with torch.autocast(hs.device.type, enabled=False):
            w = w_hh.to(dtype)
            d_z = torch.empty_like(gates)  # (T, B, 4H): gradients of the pre-activations
            d_h = d_h if d_h is not None else torch.zeros_like(hs[0])
            d_c = d_c if d_c is not None else torch.zeros_like(cs[0])
            for t in reversed(range(gates.shape[0])):
                d_c = _step_back(gates[t], cs[t], cs[t + 1], d_h + d_out[t], d_c, d_z[t], p_i, p_f, p_o)
                d_h = (d_z[t].to(dtype) @ w).to(gates.dtype)
            flat = d_z.flatten(0, 1)  # (T * B, 4H)
            d_w = flat.to(dtype).t() @ hs[:-1].flatten(0, 1).to(dtype)  # (4H, H): one product over all steps
            hidden = p_i.shape[0]
            d_peep = torch.stack(
                [
                    (d_z[..., :hidden] * cs[:-1]).sum((0, 1)),
                    (d_z[..., hidden : 2 * hidden] * cs[:-1]).sum((0, 1)),
                    (d_z[..., 3 * hidden :] * cs[1:]).sum((0, 1)),
                ]
            )
        return d_z, d_w.to(w_hh.dtype), d_peep.to(peep.dtype), d_h, d_c


def _step_back(gates, c_prev, c, d_h, d_c, d_z, p_i, p_f, p_o):  # noqa: ANN001, ANN202 - all (B, .) tensors
    """One step of the backward pass: from the gradients of h(t) and c(t), write those of the
    pre-activations into d_z (B, 4H) and return that of c(t-1) (h(t-1)'s is d_z @ W_hh)."""
    i, f, g, o = gates.chunk(4, 1)
    d_zi, d_zf, d_zg, d_zo = d_z.chunk(4, 1)
    tanh_c = torch.tanh(c)
    torch.mul(d_h * tanh_c, o * (1 - o), out=d_zo)
    d_c = d_c + d_h * o * (1 - tanh_c * tanh_c) + d_zo * p_o  # through h(t) = o tanh(c) and o's peephole
    torch.mul(d_c * g, i * (1 - i), out=d_zi)
    torch.mul(d_c * c_prev, f * (1 - f), out=d_zf)
    torch.mul(d_c * i, 1 - g * g, out=d_zg)
    return d_c * f + d_zi * p_i + d_zf * p_f
