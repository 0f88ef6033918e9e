"""CharLSTM: embedding -> stacked recurrent cells -> linear head over the vocabulary.

Three cells (``--cell``): ``lstm`` (``nn.LSTM``), ``gru`` (``nn.GRU``) and ``peephole``, the LSTM
of the gate equations in which the input and forget gates also read c(t-1) and the output gate
reads c(t) (``peephole.py``). The recurrent module is the attribute named after its cell (``model.lstm``, ...), so
an LSTM's weights keep the names they always had.

Three regularisers of AWD-LSTM (Merity et al., 2017) act in training only, each with one mask
per chunk, so they cost next to nothing per step: ``weight_drop`` (DropConnect on every layer's
hidden-to-hidden weights, so the same connections are dropped at every time step),
``embed_dropout`` (whole characters' embeddings dropped) and ``dropout``, locked (variational)
dropout between the layers and before the head: one mask per stream, the same at every step of
the chunk. A stacked LSTM or GRU with locked dropout runs its layers one call each in training,
the same oneDNN kernel ``nn.LSTM`` runs for all of them at once.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from charlstm.config import ModelConfig
from charlstm.net.dropout import drop_connect, locked_dropout
from charlstm.net.peephole import PeepholeLSTM

State = tuple[torch.Tensor, ...]  # (h, c) for the LSTMs, (h,) for the GRU; each (layers, B, H)


def recurrent(config: ModelConfig) -> nn.Module:
    """The stacked cells of ``config``, time-major (T, B, E): oneDNN's native layout for
    ``nn.LSTM``, measured 15% faster in fp32 than batch_first. ``nn.LSTM``'s own dropout between
    layers (a new mask at every step) stays off: ``CharLSTM`` drops between them, locked."""
    if config.cell == "peephole":
        return PeepholeLSTM(config.embedding, config.hidden, config.layers, config.dropout)
    cls = nn.GRU if config.cell == "gru" else nn.LSTM
    return cls(config.embedding, config.hidden, num_layers=config.layers)


class CharLSTM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embedding)
        self.add_module(config.cell, recurrent(config))
        self.head = nn.Linear(config.hidden, config.vocab_size)
        if config.cell != "gru":
            self.reset_forget_bias()

    @property
    def rnn(self) -> nn.Module:
        """The recurrent module, whichever the cell."""
        return getattr(self, self.config.cell)

    def reset_forget_bias(self) -> None:
        """Start every forget gate at bias 1 so early gradients flow through the cell state.

        Gates are ordered (input, forget, cell, output) and two biases added; the forget slice
        of ``bias_ih`` carries the 1 and that of ``bias_hh`` is zeroed.
        """
        h = self.config.hidden
        with torch.no_grad():
            for layer in range(self.config.layers):
                getattr(self.rnn, f"bias_ih_l{layer}")[h : 2 * h].fill_(1.0)
                getattr(self.rnn, f"bias_hh_l{layer}")[h : 2 * h].zero_()

    def init_state(self, batch: int, device: torch.device | str | None = None) -> State:
        """The zero state for ``batch`` streams."""
        shape = (self.config.layers, batch, self.config.hidden)
        device = device or self.head.weight.device
        return tuple(torch.zeros(shape, device=device) for _ in range(state_size(self.config)))

    def forward(self, tokens: torch.Tensor, state: State | None = None) -> tuple[torch.Tensor, State]:
        """tokens (B, T) int64 -> logits (B, T, V) and the state after the last step."""
        x = F.embedding(tokens.t(), self._embedding_weight())  # (T, B, E)
        if self.config.cell == "gru":
            out, h = self._recur(x, None if state is None else state[0])  # (T, B, H)
            state = (h,)
        else:
            out, state = self._recur(x, state)  # (T, B, H)
        logits = self.head(self._locked(out))  # (T, B, V)
        return logits.transpose(0, 1), tuple(state)  # (B, T, V), a view

    def _embedding_weight(self) -> torch.Tensor:
        """The embedding table, (V, E), with whole rows dropped (and the rest scaled) in training."""
        weight, p = self.embed.weight, self.config.embed_dropout
        if not (self.training and p):
            return weight
        keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p)
        return weight * keep / (1 - p)

    def _locked(self, x: torch.Tensor) -> torch.Tensor:
        """x (T, B, H) with locked dropout in training: the same units of a stream dropped at every step."""
        return locked_dropout(x, self.config.dropout) if self.training else x

    def _recur(self, x: torch.Tensor, state: torch.Tensor | State | None):  # noqa: ANN202 - the cell's own output
        """The recurrent module over x; in training, its hidden-to-hidden weights dropped, and
        locked dropout between its layers."""
        p, config = self.config.weight_drop, self.config
        between = self.training and config.dropout and config.layers > 1 and config.cell != "peephole"
        if not (self.training and p) and not between:
            return self.rnn(x, state)
        weights = dict(self.rnn.named_parameters())
        dropped = {name: drop_connect(w, p) for name, w in weights.items() if p and name.startswith("weight_hh")}
        if not between:  # the peephole LSTM drops between its layers itself
            return functional_call(self.rnn, dropped, (x, state))
        return self._layer_by_layer(x, state, weights | dropped)

    def _layer_by_layer(self, x: torch.Tensor, state: torch.Tensor | State | None, weights: dict):  # noqa: ANN202
        """``nn.LSTM``'s or ``nn.GRU``'s stack over x one layer a call (the op its forward runs,
        on one layer's weights), with locked dropout between the layers."""
        config, gru = self.config, self.config.cell == "gru"
        if state is None:
            state = self.init_state(x.shape[1], x.device)
        elif gru:
            state = (state,)
        finals: list[list[torch.Tensor]] = [[] for _ in state]
        for k in range(config.layers):
            if k:
                x = locked_dropout(x, config.dropout)
            params = [weights[f"{name}_l{k}"] for name in ("weight_ih", "weight_hh", "bias_ih", "bias_hh")]
            if gru:
                x, h = torch.gru(x, state[0][k : k + 1], params, True, 1, 0.0, True, False, False)
                last: tuple[torch.Tensor, ...] = (h,)
            else:
                hc = (state[0][k : k + 1], state[1][k : k + 1])
                x, *last = torch.lstm(x, hc, params, True, 1, 0.0, True, False, False)
            for kept, t in zip(finals, last, strict=True):
                kept.append(t)
        out = tuple(torch.cat(kept) for kept in finals)
        return (x, out[0]) if gru else (x, out)

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def state_size(config: ModelConfig) -> int:
    """Tensors in a carried state: h and c, or the GRU's h alone."""
    return 1 if config.cell == "gru" else 2


def detach_state(state: State) -> State:
    """Cut the graph between chunks (truncated BPTT) while keeping the values."""
    return tuple(t.detach() for t in state)


def first_stream(state: State) -> State:
    """Row 0 of a carried state, (layers, 1, H) each, detached fp32: a realistic start for sampling."""
    return tuple(t[:, :1].detach().float().contiguous() for t in state)
