"""CharLSTM: embedding -> stacked recurrent cells -> linear head over the vocabulary.

Three cells (``--cell``): ``lstm`` (``nn.LSTM``), ``gru`` (``nn.GRU``) and ``peephole``, the LSTM
of the gate equations in which the input and forget gates also read c(t-1) and the output gate
reads c(t) (``peephole.py``). The recurrent module is the attribute named after its cell (``model.lstm``, ...), so
an LSTM's weights keep the names they always had.

Two regularisers of AWD-LSTM (Merity et al., 2017) act in training only, and cost next to
nothing per step because their masks are drawn over weights, not over activations:
``weight_drop`` (DropConnect on every layer's hidden-to-hidden weights, one mask per chunk,
so the same connections are dropped at every time step) and ``embed_dropout`` (whole
characters' embeddings dropped, one mask per chunk).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn
from torch.func import functional_call

from charlstm.config import ModelConfig
from charlstm.net.peephole import PeepholeLSTM

State = tuple[torch.Tensor, ...]  # (h, c) for the LSTMs, (h,) for the GRU; each (layers, B, H)


def recurrent(config: ModelConfig) -> nn.Module:
    """The stacked cells of ``config``, time-major (T, B, E): oneDNN's native layout for
    ``nn.LSTM``, measured 15% faster in fp32 than batch_first."""
    dropout = config.dropout if config.layers > 1 else 0.0
    if config.cell == "peephole":
        return PeepholeLSTM(config.embedding, config.hidden, config.layers, dropout)
    cls = nn.GRU if config.cell == "gru" else nn.LSTM
    return cls(config.embedding, config.hidden, num_layers=config.layers, dropout=dropout)


class CharLSTM(nn.Module):
    def __init__(self, config: ModelConfig):
        super().__init__()
        self.config = config
        self.embed = nn.Embedding(config.vocab_size, config.embedding)
        self.add_module(config.cell, recurrent(config))
        self.drop = nn.Dropout(config.dropout)
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
        logits = self.head(self.drop(out))  # (T, B, V)
        return logits.transpose(0, 1), tuple(state)  # (B, T, V), a view

    def _embedding_weight(self) -> torch.Tensor:
        """The embedding table, (V, E), with whole rows dropped (and the rest scaled) in training."""
        weight, p = self.embed.weight, self.config.embed_dropout
        if not (self.training and p):
            return weight
        keep = weight.new_empty(weight.shape[0], 1).bernoulli_(1 - p)
        return weight * keep / (1 - p)

    def _recur(self, x: torch.Tensor, state: torch.Tensor | State | None):  # noqa: ANN202 - the cell's own output
        """The recurrent module over x, its hidden-to-hidden weights dropped in training."""
        p = self.config.weight_drop
        if not (self.training and p):
            return self.rnn(x, state)
        weights = self.rnn.named_parameters()
        dropped = {name: drop_connect(w, p) for name, w in weights if name.startswith("weight_hh")}
        return functional_call(self.rnn, dropped, (x, state))

    def num_params(self) -> int:
        return sum(p.numel() for p in self.parameters())


def drop_connect(weight: torch.Tensor, p: float) -> torch.Tensor:
    """``weight`` with each entry zeroed with probability ``p`` and the rest scaled by 1/(1 - p), as
    ``F.dropout`` does; a uniform draw compared with ``p`` takes half the time of its Bernoulli draw
    on CPU (4 ms against 8 for a 2048 x 512 matrix, 3% of the small preset's step)."""
    keep = torch.rand_like(weight) >= p
    return weight * keep / (1 - p)


def state_size(config: ModelConfig) -> int:
    """Tensors in a carried state: h and c, or the GRU's h alone."""
    return 1 if config.cell == "gru" else 2


def detach_state(state: State) -> State:
    """Cut the graph between chunks (truncated BPTT) while keeping the values."""
    return tuple(t.detach() for t in state)


def first_stream(state: State) -> State:
    """Row 0 of a carried state, (layers, 1, H) each, detached fp32: a realistic start for sampling."""
    return tuple(t[:, :1].detach().float().contiguous() for t in state)
