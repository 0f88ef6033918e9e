"""Evaluation: the loss of a model over a text, and of a checkpoint on its own corpus or another."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from charlstm.checkpoint import Checkpoint, load_checkpoint
from charlstm.config import EvalConfig
from charlstm.corpus import StreamBatches, load_corpus, remap_tokens, resolve_corpus, split_tokens
from charlstm.device import autocast
from charlstm.errors import UserError
from charlstm.model import CharLSTM, State

EVAL_STREAMS = 64  # evaluation splits the text into this many carried-state streams


@dataclass
class EvalResult:
    """Mean loss over ``chars`` predicted characters."""

    loss: float  # nats per character
    chars: int

    @property
    def bpc(self) -> float:
        """Bits per character."""
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def to_dict(self) -> dict[str, float | int]:
        return {"loss": self.loss, "bpc": self.bpc, "perplexity": self.perplexity, "chars": self.chars}


@dataclass
class EvalReport:
    """What ``charlstm eval`` measured: the result, on which text and which part of it."""

    result: EvalResult
    source: Path
    split: str


@torch.no_grad()
def evaluate(
    model: CharLSTM,
    tokens: np.ndarray,
    seq_len: int = EvalConfig.seq_len,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    streams: int = EVAL_STREAMS,
) -> EvalResult:
    """Mean loss over every predictable character of ``tokens`` (all N - 1 of them).

    The text is read as ``streams`` contiguous pieces in parallel, state carried from chunk to
    chunk within each piece. Each piece but the first starts from the state left by reading the
    ``seq_len`` characters before it (unscored), so no piece starts cold in the middle of the
    text; the few characters left over after the last piece continue its state.
    """
    if len(tokens) < 2:
        raise UserError(f"the text to measure has {len(tokens)} characters, expected at least 2")
    device = torch.device(device)
    streams = max(1, min(streams, (len(tokens) - 1) // max(seq_len, 1)))
    batches = StreamBatches(tokens, streams, seq_len, drop_last=False)
    was_training = model.training
    model.eval()
    total, count = torch.zeros((), dtype=torch.float64, device=device), 0

    def score(x: torch.Tensor, y: torch.Tensor, state: State | None) -> State:
        nonlocal total, count
        with autocast(device, precision):
            logits, state = model(x.to(device), state)
        total += F.cross_entropy(logits.flatten(0, 1).float(), y.to(device).flatten(), reduction="sum").double()
        count += y.numel()
        return state

    state = _warm_streams(model, tokens, batches, device, precision)
    for i in range(len(batches)):
        state = score(*batches.batch(i), state)
    end = streams * batches.stream_len  # last target read so far
    if end < len(tokens) - 1:
        rest = torch.from_numpy(np.asarray(tokens[end:], dtype=np.int64))[None]  # (1, leftover + 1)
        last = None if state is None else (state[0][:, -1:].contiguous(), state[1][:, -1:].contiguous())
        score(rest[:, :-1], rest[:, 1:], last)
    model.train(was_training)
    return EvalResult(loss=float(total) / max(count, 1), chars=count)


def _warm_streams(
    model: CharLSTM, tokens: np.ndarray, batches: StreamBatches, device: torch.device, precision: str
) -> State | None:
    """State of every stream after reading the text just before it; stream 0 starts at zero."""
    if batches.streams < 2:
        return None
    width = min(batches.seq_len, batches.stream_len)
    starts = np.maximum(batches.starts[:, 0], batches.stream_len) - width  # stream 0 borrows stream 1's
    idx = starts[:, None] + np.arange(width, dtype=np.int64)  # (B, W)
    x = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64)).to(device)
    with autocast(device, precision):
        _, (h, c) = model(x)
    h, c = h.float(), c.float()
    h[:, 0].zero_()
    c[:, 0].zero_()
    return h, c


def evaluate_checkpoint(checkpoint: str | Path, cfg: EvalConfig) -> EvalReport:
    """The loss of a checkpoint (in fp32) on its own validation tail, or on ``cfg``'s text and split."""
    ckpt = load_checkpoint(checkpoint)
    tokens, source = _text_to_measure(ckpt, cfg)
    if cfg.part != "all":
        tokens = split_tokens(tokens, ckpt.train_config.val_fraction)[cfg.part == "val"]
    return EvalReport(evaluate(ckpt.build_model(), tokens, seq_len=cfg.seq_len), source, cfg.part)


def _text_to_measure(ckpt: Checkpoint, cfg: EvalConfig) -> tuple[np.ndarray, Path]:
    """The tokens (in the checkpoint's vocabulary) of ``cfg.corpus``, or of the checkpoint's own corpus."""
    own = ckpt.train_config
    path = resolve_corpus(cfg.corpus or own.corpus)
    encoding = cfg.encoding or ("utf-8" if cfg.corpus else own.encoding)
    return remap_tokens(load_corpus(path, encoding), ckpt.vocab), path
