"""Evaluation: the loss of a model over a text, and of a checkpoint on its own corpus or another."""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charlstm.config import EvalConfig
from charlstm.data.batches import StreamBatches, split_tokens
from charlstm.data.corpus import Reading, TokenizedCorpus, load_corpus, load_in_vocab
from charlstm.data.sources import resolve_corpus
from charlstm.device import autocast
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM, State, first_stream
from charlstm.store.checkpoint import Checkpoint, load_checkpoint
from charlstm.training.distributed import SINGLE, Processes, max_all, sum_all
from charlstm.training.dynamic import (
    DynamicResult,
    Tally,
    char_count,
    dynamic_loss,
    fit_work,
    rates_for,
    stream_count,
)

EVAL_STREAMS = 64  # evaluation splits the text into this many carried-state streams


@dataclass
class EvalResult:
    """Mean loss over ``chars`` predicted characters, and the state the model reached reading
    the first piece of the text (see :func:`evaluate`)."""

    loss: float  # nats per character
    chars: int
    first_state: State | None = field(default=None, repr=False, compare=False)
    dynamic: DynamicResult | None = None  # asked for: the text read in streams, statically and dynamically

    @property
    def bpc(self) -> float:
        """Bits per character."""
        return self.loss / math.log(2)

    @property
    def perplexity(self) -> float:
        return math.exp(self.loss)

    def to_dict(self) -> dict[str, Any]:
        plain = {"loss": self.loss, "bpc": self.bpc, "perplexity": self.perplexity, "chars": self.chars}
        return plain if self.dynamic is None else {**plain, "dynamic": self.dynamic.to_dict()}


@dataclass
class EvalReport:
    """What ``charlstm eval`` measured: the result, on which text and which part of it."""

    result: EvalResult
    corpus: str  # as given, or the checkpoint's own
    split: str
    dropped_chars: int = 0  # characters the model cannot encode, left out (--unknown skip)


class EvalInterrupted(Exception):
    """A stop was requested while evaluating: the result would be partial, so there is none."""


ProgressFn = Callable[[int, int], None]  # (chunks done, chunks in all)


@torch.no_grad()
def evaluate(
    model: CharLSTM,
    tokens: np.ndarray,
    seq_len: int = EvalConfig.seq_len,
    device: torch.device | str = "cpu",
    precision: str = "fp32",
    streams: int = EVAL_STREAMS,
    *,
    char_starts: np.ndarray | None = None,
    max_chars: int | None = None,
    should_stop: Callable[[], bool] | None = None,
    on_progress: ProgressFn | None = None,
    procs: Processes = SINGLE,
) -> EvalResult:
    """Mean loss per character over every predictable token of ``tokens`` (all N - 1 of them),
    or over ``max_chars`` of them spread through the text.

    The text is read as ``streams`` contiguous pieces in parallel, state carried from chunk to
    chunk within each piece. Each piece starts from the state left by reading the ``seq_len``
    tokens before it (unscored), so no piece starts cold in the middle of the text. Read whole,
    the pieces tile the text and the few tokens left over continue the last one; with
    ``max_chars``, the pieces are spread evenly over it. ``char_starts`` (V,) marks the ids that
    begin a character (see ``CharVocab.char_starts``): the loss is divided by those, not by
    tokens. ``should_stop`` is asked between chunks; when it says yes, ``EvalInterrupted``.
    Several processes share the pieces out and add up their sums.

    The result keeps ``first_state``: the state at the end of the first piece, which reads the
    text from its start, from zero (``tokens[:stream_len]``, as the first chunks of a pass do
    in training): (layers, 1, H) each, fp32 on the CPU; None in processes other than the first.
    It is a warm start for sampling from this model (best.pt keeps the averaged weights' own).
    """
    if len(tokens) < 2:
        raise UserError(f"the text to measure has {len(tokens)} characters, expected at least 2")
    device = torch.device(device)
    whole = _pieces(tokens, streams, seq_len, max_chars)
    mine, holds_last = _share(whole, procs)
    scorer = _Scorer(model, device, precision, char_starts)
    was_training = model.training
    model.eval()
    try:
        state = _warm_streams(model, tokens, mine, device, precision) if mine.streams else None
        for i in range(len(whole)):
            if should_stop is not None and max_all(procs, [float(should_stop())])[0]:
                raise EvalInterrupted
            state = scorer.score(*mine.batch(i), state) if mine.streams else None
            if on_progress is not None:
                on_progress(i + 1, len(whole))
        first = tuple(t.cpu() for t in first_stream(state)) if state is not None and procs.main else None
        if whole.tiled and holds_last:
            scorer.score_rest(tokens, whole.streams * whole.stream_len, state)
    finally:
        model.train(was_training)
    total, chars = sum_all(procs, [float(scorer.total), float(scorer.count)])
    return EvalResult(loss=total / max(chars, 1), chars=int(chars), first_state=first)


class _Scorer:
    """Sums of the loss and of the characters predicted, chunk by chunk (kept on the device)."""

    def __init__(self, model: CharLSTM, device: torch.device, precision: str, char_starts: np.ndarray | None):
        self.model, self.device, self.precision = model, device, precision
        every_id = char_starts is None or char_starts.all()  # no byte tokens: every token is a character
        self.starts = None if every_id else torch.as_tensor(char_starts, device=device)
        self.total = torch.zeros((), dtype=torch.float64, device=device)
        self.count = torch.zeros((), dtype=torch.int64, device=device)

    def score(self, x: torch.Tensor, y: torch.Tensor, state: State | None) -> State:
        y = y.to(self.device)
        with autocast(self.device, self.precision):
            logits, state = self.model(x.to(self.device), state)
        self.total += F.cross_entropy(logits.flatten(0, 1).float(), y.flatten(), reduction="sum").double()
        self.count += y.numel() if self.starts is None else self.starts[y].sum()
        return state

    def score_rest(self, tokens: np.ndarray, end: int, state: State | None) -> None:
        """The tokens after ``end`` (the last target the tiling pieces read), continuing the last piece."""
        if end < len(tokens) - 1:
            rest = torch.from_numpy(np.asarray(tokens[end:], dtype=np.int64))[None]  # (1, leftover + 1)
            last = None if state is None else tuple(t[:, -1:].contiguous() for t in state)
            self.score(rest[:, :-1], rest[:, 1:], last)


def _share(whole: StreamBatches, procs: Processes) -> tuple[StreamBatches, bool]:
    """This process's contiguous share of the pieces, and whether it holds the last one."""
    if not procs.many:
        return whole, True
    shares = np.array_split(np.arange(whole.streams), procs.world)
    rows = shares[procs.rank]
    holder = max(r for r, share in enumerate(shares) if len(share))
    starts = whole.starts[rows, 0]
    mine = StreamBatches(whole.tokens, len(rows), whole.seq_len, False, starts=starts, stream_len=whole.stream_len)
    return mine, procs.rank == holder


def _pieces(tokens: np.ndarray, streams: int, seq_len: int, max_chars: int | None) -> StreamBatches:
    """The whole text cut into ``streams`` pieces, or ``max_chars`` of it in pieces spread evenly."""
    predictable = len(tokens) - 1
    if max_chars is None or max_chars >= predictable:
        streams = max(1, min(streams, predictable // max(seq_len, 1)))
        return StreamBatches(tokens, streams, seq_len, drop_last=False)
    streams = max(1, min(streams, max_chars // max(seq_len, 1)))
    length = max_chars // streams
    starts = np.linspace(0, predictable - length, streams).round().astype(np.int64)
    return StreamBatches(tokens, streams, seq_len, drop_last=False, starts=starts, stream_len=length)


def _warm_streams(
    model: CharLSTM, tokens: np.ndarray, batches: StreamBatches, device: torch.device, precision: str
) -> State | None:
    """State of every stream after reading the ``seq_len`` tokens just before it; a stream with
    fewer before it (the first) starts at zero."""
    if batches.streams < 2 and batches.starts[0, 0] == 0:
        return None
    width = min(batches.seq_len, batches.stream_len)
    begin = batches.starts[:, 0] - width
    cold = begin < 0
    idx = np.maximum(begin, 0)[:, None] + np.arange(width, dtype=np.int64)  # (B, W)
    x = torch.from_numpy(np.asarray(tokens[idx], dtype=np.int64)).to(device)
    with autocast(device, precision):
        _, state = model(x)
    state = tuple(t.float() for t in state)
    for t in state:
        t[:, torch.from_numpy(cold)] = 0
    return state


def evaluate_checkpoint(
    checkpoint: str | Path,
    cfg: EvalConfig,
    on_progress: ProgressFn | None = None,
    on_dynamic: ProgressFn | None = None,
) -> EvalReport:
    """The loss of a checkpoint (in fp32) on its own validation tail, or on ``cfg``'s text and
    split; ``on_dynamic`` hears the progress of dynamic evaluation (``read_dynamically``)."""
    ckpt = load_checkpoint(checkpoint)
    corpus = _text_to_measure(ckpt, cfg)
    tokens = corpus.tokens
    if cfg.part != "all":
        tokens = split_tokens(tokens, ckpt.train_config.val_fraction)[cfg.part == "val"]
    model, starts = ckpt.build_model(), ckpt.vocab.char_starts()
    result = evaluate(model, tokens, cfg.seq_len, char_starts=starts, max_chars=cfg.max_chars, on_progress=on_progress)
    if cfg.dynamic:
        measured = tokens if cfg.max_chars is None else tokens[: cfg.max_chars + 1]
        result.dynamic = read_dynamically(ckpt, measured, on_dynamic)
    return EvalReport(result, corpus.source.spec, cfg.part, corpus.stats.dropped_chars)


def read_dynamically(ckpt: Checkpoint, tokens: np.ndarray, on_progress: ProgressFn | None = None) -> DynamicResult:
    """``tokens`` read statically and with dynamic evaluation, on the CPU in fp32, by the
    checkpoint's rates (fitted on its own training split at first use); ``on_progress`` hears
    (tokens done, tokens in all) over the fit and both readings."""
    if len(tokens) < 2:
        raise UserError(f"the text to measure has {len(tokens)} characters, expected at least 2")
    model, source = ckpt.build_model(), resolve_corpus(ckpt.train_config.corpus)
    why = "dynamic evaluation fits its rates and statistics on the text the model trained on"
    source.check_unchanged((ckpt.corpus or {}).get("sha256"), "the model trained on it", why)
    own = load_in_vocab(source, Reading.of(ckpt.train_config), ckpt.vocab)
    train = split_tokens(own.tokens, ckpt.train_config.val_fraction)[0]
    starts, targets = ckpt.vocab.char_starts(), len(tokens) - 1
    tally = Tally(2 * targets + (0 if ckpt.dynamic else fit_work(len(train))), on_progress)
    rates, rms, rates_from = rates_for(ckpt, model, train, starts, tally)
    streams = stream_count(targets)
    started = time.perf_counter()
    static = dynamic_loss(model, tokens, replace(rates, lr=0.0, decay=0.0), rms, starts, streams, tally)  # same pieces
    middle = time.perf_counter()
    dynamic = dynamic_loss(model, tokens, rates, rms, starts, streams, tally)
    seconds = (middle - started, time.perf_counter() - middle)
    chars = char_count(np.asarray(tokens[1:], dtype=np.int64), starts)
    return DynamicResult(static, dynamic, chars, *seconds, rates, rates_from, streams)


def _text_to_measure(ckpt: Checkpoint, cfg: EvalConfig) -> TokenizedCorpus:
    """``cfg.corpus``, or the checkpoint's own corpus (sharing its run's token file), in the
    checkpoint's vocabulary."""
    own = ckpt.train_config
    encoding = cfg.encoding or ("utf-8" if cfg.corpus else own.encoding)
    source = resolve_corpus(cfg.corpus or own.corpus)
    if cfg.corpus is None:
        reading = dataclasses.replace(Reading.of(own), encoding=encoding, unknown=cfg.unknown)
        return load_in_vocab(source, reading, ckpt.vocab)
    return load_corpus(source, Reading(encoding, cfg.skip_bad_files, vocab=ckpt.vocab, unknown=cfg.unknown))
