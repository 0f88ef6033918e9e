"""Text generation: a fast one-character step over pre-arranged weights, and the sampling rules
(temperature, top-k, top-p) on its logits.

Calling ``nn.LSTM`` once per character pays oneDNN's set-up on every call (about a
millisecond per layer on CPU). The prompt is run once as a sequence through ``nn.LSTM``;
after that :class:`Stepper` advances the state with plain matrix products on weights it
arranged once: transposed for ``addmm`` and, for layer 0, with the embedding folded into the
input projection (a table of V x 4H rows, so one lookup replaces the embedding and a matmul).
"""

from __future__ import annotations

from collections.abc import Iterator

import torch

from charlstm.corpus import CharVocab
from charlstm.errors import UserError
from charlstm.model import CharLSTM

LayerState = list[tuple[torch.Tensor, torch.Tensor]]  # per layer (h, c), each (B, H)


class Stepper:
    """One LSTM time step for ``B`` streams at a time, numerically the same as ``nn.LSTM``."""

    @torch.no_grad()
    def __init__(self, model: CharLSTM):
        lstm, n = model.lstm, model.config.layers
        self.model = model
        self.input_tables: list[torch.Tensor] = []  # layer 0: (V, 4H); others: W_ih^T (H, 4H)
        self.biases: list[torch.Tensor] = []  # (4H,), b_ih + b_hh (folded into the table for layer 0)
        self.recurrent: list[torch.Tensor] = []  # W_hh^T (H, 4H)
        for layer in range(n):
            w_ih = getattr(lstm, f"weight_ih_l{layer}").float()
            bias = (getattr(lstm, f"bias_ih_l{layer}") + getattr(lstm, f"bias_hh_l{layer}")).float()
            if layer == 0:
                table = torch.addmm(bias, model.embed.weight.float(), w_ih.t())  # (V, 4H)
                self.input_tables.append(table.contiguous())
            else:
                self.input_tables.append(w_ih.t().contiguous())
            self.biases.append(bias.contiguous())
            self.recurrent.append(getattr(lstm, f"weight_hh_l{layer}").float().t().contiguous())
        self.head_w = model.head.weight.float().t().contiguous()  # (H, V)
        self.head_b = model.head.bias.float().contiguous()  # (V,)

    @torch.inference_mode()
    def prime(self, ids: torch.Tensor) -> tuple[torch.Tensor, LayerState]:
        """Run a prompt (B, T) once through the model: logits of its last step (B, V) and the state."""
        self.model.eval()
        logits, (h, c) = self.model(ids)
        state = [(h[i].float(), c[i].float()) for i in range(h.shape[0])]
        return logits[:, -1].float(), state

    @torch.inference_mode()
    def step(self, tokens: torch.Tensor, state: LayerState) -> tuple[torch.Tensor, LayerState]:
        """tokens (B,) -> logits (B, V) and the next state."""
        x = None
        new_state: LayerState = []
        for layer, (h, c) in enumerate(state):
            if layer == 0:
                gates = torch.addmm(self.input_tables[0].index_select(0, tokens), h, self.recurrent[0])
            else:
                gates = torch.addmm(self.biases[layer], x, self.input_tables[layer])
                gates.addmm_(h, self.recurrent[layer])  # (B, 4H): input, forget, cell, output
            act = gates.sigmoid()
            i, f, _, o = act.chunk(4, 1)
            g = gates[:, 2 * h.shape[1] : 3 * h.shape[1]].tanh()
            c = torch.addcmul(f * c, i, g)
            x = o * c.tanh()
            new_state.append((x, c))
        return torch.addmm(self.head_b, x, self.head_w), new_state


# ----------------------------------------------------------------------------- sampling rules
def top_k_filter(logits: torch.Tensor, k: int) -> torch.Tensor:
    """Keep the ``k`` largest logits of each row (B, V); the rest become -inf."""
    if k <= 0 or k >= logits.shape[-1]:
        return logits
    kth = torch.topk(logits, k, dim=-1).values[..., -1:]  # (B, 1)
    return logits.masked_fill(logits < kth, float("-inf"))


def top_p_filter(logits: torch.Tensor, p: float) -> torch.Tensor:
    """Keep the smallest set of most likely tokens whose probability reaches ``p`` (nucleus)."""
    if p >= 1.0:
        return logits
    sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
    probs = sorted_logits.softmax(-1)
    before = probs.cumsum(-1) - probs  # probability mass strictly ahead of each token
    drop_sorted = before >= p  # the top token always has 0 ahead of it, so it is kept
    drop = drop_sorted.scatter(-1, order, drop_sorted)
    return logits.masked_fill(drop, float("-inf"))


def next_tokens(
    logits: torch.Tensor,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw one id per row of logits (B, V) -> (B,); temperature 0 is greedy (argmax)."""
    if temperature == 0:
        return logits.argmax(-1)
    # Shift the maximum to 0 before dividing, so a tiny temperature cannot overflow to inf.
    logits = (logits - logits.max(-1, keepdim=True).values) / temperature
    if top_k:
        logits = top_k_filter(logits, top_k)
    if top_p is not None:
        logits = top_p_filter(logits, top_p)
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(1)


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
    """Ids the model reads before generating: the prompt, or a newline when it is empty."""
    if prompt:
        return vocab.encode(prompt)
    return [vocab.index["\n"] if "\n" in vocab.index else 0]


def generate_ids(
    stepper: Stepper,
    prime: torch.Tensor,
    length: int,
    temperature: float,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
) -> Iterator[torch.Tensor]:
    """Yield ``length`` tensors of ids (B,), one per generated position, after reading ``prime`` (B, T)."""
    if length <= 0:
        return
    logits, state = stepper.prime(prime)
    for i in range(length):
        tokens = next_tokens(logits, temperature, top_k, top_p, generator)
        yield tokens
        if i + 1 < length:
            logits, state = stepper.step(tokens, state)


def generate(
    model: CharLSTM,
    vocab: CharVocab,
    prompt: str,
    length: int,
    temperature: float = 0.8,
    top_k: int | None = None,
    top_p: float | None = None,
    generator: torch.Generator | None = None,
    stepper: Stepper | None = None,
) -> Iterator[str]:
    """Yield generated characters one at a time, continuing ``prompt`` (not repeated)."""
    stepper = stepper or Stepper(model)
    device = stepper.head_w.device
    prime = torch.tensor([priming_ids(vocab, prompt)], dtype=torch.long, device=device)
    for tokens in generate_ids(stepper, prime, length, temperature, top_k, top_p, generator):
        yield vocab.chars[int(tokens[0])]
