"""Dynamic evaluation (Krause, Kahembwe, Murray and Renals, "Dynamic Evaluation of Neural Sequence
Models", 2018): while the model reads a text, it takes small gradient steps on what it has read,
so it adapts to the text's names, words and style; a different measure from the static loss,
reported beside it.

The text is read in segments of ``segment`` tokens, the state carried through each stream.
Each segment is **scored first**, with the weights as the segments before it left them, and only
then does the model learn from it::

    for each segment:
        losses = model(segment)                 # the scores: nothing learned from this segment yet
        g = gradient of mean(losses)
        W += decay * r * (W0 - W) - lr * g / (rms + eps)

``rms`` is the root mean square of each weight's gradient over segments of the *training* text
(:func:`gradient_rms`), so every weight moves in steps of about the same size, as RMSprop does;
``r`` is that RMS relative to the mean of each weight tensor's mean RMS (``decay * r`` at most 1), so the weights
that move most are pulled back hardest toward the trained ones, ``W0``. The two rates, ``lr`` and
``decay``, are fitted by a grid search on a held-out part of the training split (:func:`fit_rates`),
never on the text judged.

A long text is read as several **streams** (:func:`read_streams`), contiguous pieces each read
by its own copy of the weights from the trained ones, one per ``STREAM_TOKENS`` of text, so the
reading and its result do not depend on the machine; as many as there are cores run at once, in
threads (torch's kernels let go of Python's lock), each kernel on one core. Like ``evaluate``'s
pieces, each stream after the first starts from the state its ``WARM`` tokens before leave.
"""

from __future__ import annotations

from collections.abc import Callable
from copy import deepcopy
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

from charlstm.choices import RatesFrom
from charlstm.data.batches import StreamBatches
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM, State, detach_state
from charlstm.store.checkpoint import FORMAT_VERSION, Checkpoint, load_checkpoint
from charlstm.training.parallel import Tally, in_parallel, workers

SEGMENT = 20  # tokens a step learns from (Krause et al. used 5 to 50)
EPSILON = 2e-5  # keeps a weight whose gradient was always 0 from an infinite step
RMS_STREAMS = 64  # training streams the gradient statistics are gathered over, each ...
RMS_SEGMENTS = 100  # ... for this many segments
FIT_CHARS = 10_000  # the end of the training split the rates are fitted on
LR_GRID = (2e-5, 5e-5, 1e-4, 2e-4)  # 5e-5 won a grid of 5e-5 to 4e-4 on the 600 s model: one step below
DECAY_GRID = (0.0, 0.002, 0.01)
STREAM_TOKENS = 50_000  # a stream for each this many tokens of the text read (at least one)
WARM = 256  # tokens before a stream's piece read (unscored, unlearned) for its starting state
STATIC_SEGMENT = 256  # tokens a call reads where nothing is learned


@dataclass(frozen=True)
class DynamicRates:
    """The rates of dynamic evaluation, and where they were fitted."""

    lr: float
    decay: float
    segment: int = SEGMENT
    fitted_chars: int = 0  # tokens of the training split's end they were fitted on
    static_loss: float = float("nan")  # there, without dynamic evaluation
    dynamic_loss: float = float("nan")  # there, with these rates

    def to_dict(self) -> dict[str, float | int]:
        return {k: getattr(self, k) for k in self.__dataclass_fields__}

    @classmethod
    def from_dict(cls, data: Any) -> DynamicRates:
        """Rates as a checkpoint keeps them; ``UserError`` for a damaged record."""
        try:
            rates = cls(**{k: data[k] for k in cls.__dataclass_fields__ if k in data})
            if not (rates.lr >= 0 and rates.decay >= 0 and int(rates.segment) == rates.segment >= 1):
                raise ValueError(data)
            return rates
        except (TypeError, ValueError, KeyError):
            raise UserError(f"the checkpoint's dynamic evaluation rates are damaged ({data!r})") from None


def _params(model: CharLSTM) -> dict[str, torch.Tensor]:
    return {name: p for name, p in model.named_parameters()}


@torch.inference_mode(False)
@torch.enable_grad()
def gradient_rms(
    model: CharLSTM,
    tokens: np.ndarray,
    segment: int = SEGMENT,
    streams: int = RMS_STREAMS,
    segments: int = RMS_SEGMENTS,
) -> dict[str, torch.Tensor]:
    """Each weight's root mean square gradient of the mean loss, over ``segments`` segments of
    ``streams`` contiguous streams of ``tokens`` (the training text), the state carried."""
    streams = max(1, min(streams, (len(tokens) - 1) // segment))
    batches = StreamBatches(tokens, streams, segment, drop_last=True)
    params = _params(model)
    squares = {name: torch.zeros_like(p) for name, p in params.items()}
    was_training, state, count = model.training, None, 0
    model.eval()
    try:
        for i in range(min(segments, len(batches) if len(tokens) > segment else 0)):
            x, y = batches.batch(i)
            logits, state = model(x, state)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
            grads = torch.autograd.grad(loss, list(params.values()))
            for name, g in zip(params, grads, strict=True):
                squares[name] += g * g
            state, count = detach_state(state), count + 1
    finally:
        model.train(was_training)
    if not count:
        raise UserError(f"dynamic evaluation needs more than {segment} tokens of training text for its statistics")
    return {name: (s / count).sqrt() for name, s in squares.items()}


class DynamicReader:
    """Reads texts with dynamic evaluation from one trained model and its gradient statistics;
    each text starts again from the trained weights."""

    def __init__(self, model: CharLSTM, rms: dict[str, torch.Tensor]):
        self.model = deepcopy(model).eval()  # its weights move as it reads; the caller's never do
        self.trained = {name: p.detach().clone() for name, p in _params(self.model).items()}
        self.rms = rms
        mean = torch.stack([r.mean() for r in rms.values()]).mean()
        self.relative = {name: r / mean for name, r in rms.items()}

    @torch.inference_mode(False)
    @torch.enable_grad()
    @torch.autocast("cpu", enabled=False)  # fp32, whatever the calling thread has on
    def scores(
        self,
        tokens: np.ndarray,
        rates: DynamicRates,
        start: State | None = None,
        tally: Tally | None = None,
    ) -> np.ndarray:
        """The loss of each of ``tokens[1:]`` (N - 1 of them, in nats), each scored before any
        update that has read it, from the trained weights and ``start`` (or zeros); each segment
        counted in ``tally``."""
        params = self._restore()
        if not (rates.lr or rates.decay):  # no steps: the static scores, without gradients
            return self._static(tokens, rates.segment, start, tally)
        pull = {name: (rates.decay * r).clamp(max=1.0) for name, r in self.relative.items()}  # Krause's clip at 1/decay
        step = {name: rates.lr / (r + EPSILON) for name, r in self.rms.items()}
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        out = np.empty(len(ids) - 1, np.float32)
        state, total = start, len(out)
        for begin in range(0, total, rates.segment):
            end = min(begin + rates.segment, total)
            logits, state = self.model(ids[None, begin:end], state)
            losses = F.cross_entropy(logits[0].float(), ids[begin + 1 : end + 1], reduction="none")
            out[begin:end] = losses.detach().numpy()  # scored: only now does the model learn from this segment
            grads = torch.autograd.grad(losses.mean(), list(params.values()))
            with torch.no_grad():
                for (name, p), g in zip(params.items(), grads, strict=True):
                    p.add_(pull[name] * (self.trained[name] - p) - step[name] * g)
            state = detach_state(state)
            if tally is not None:
                tally.add(end - begin)
        return out

    @torch.no_grad()
    def _restore(self) -> dict[str, torch.Tensor]:
        """The reader's weights set back to the trained ones; its parameters by name."""
        params = _params(self.model)
        for name, p in params.items():
            p.copy_(self.trained[name])
        return params

    @torch.no_grad()
    def _static(
        self,
        tokens: np.ndarray,
        segment: int,
        start: State | None,
        tally: Tally | None,
    ) -> np.ndarray:
        """What :meth:`scores` gives at rates 0, read with no gradients in longer segments."""
        ids = torch.from_numpy(np.asarray(tokens, dtype=np.int64))
        out, state = np.empty(len(ids) - 1, np.float32), start
        segment = max(segment, STATIC_SEGMENT)  # the same scores up to rounding, in fewer calls
        for begin in range(0, len(out), segment):
            end = min(begin + segment, len(out))
            logits, state = self.model(ids[None, begin:end], state)
            out[begin:end] = F.cross_entropy(logits[0].float(), ids[begin + 1 : end + 1], reduction="none").numpy()
            if tally is not None:
                tally.add(end - begin)
        return out

    @torch.inference_mode(False)  # a state that a reading may then learn through
    @torch.no_grad()
    @torch.autocast("cpu", enabled=False)
    def warm_state(self, tokens: np.ndarray) -> State | None:
        """The state the trained weights leave after reading ``tokens`` (None for none)."""
        if not len(tokens):
            return None
        self._restore()
        return self.model(torch.from_numpy(np.asarray(tokens, dtype=np.int64))[None], None)[1]


def stream_count(targets: int) -> int:
    """The streams a text of ``targets`` scored tokens is read in: one per ``STREAM_TOKENS``."""
    return max(1, targets // STREAM_TOKENS)


def stream_bounds(targets: int, streams: int) -> list[tuple[int, int]]:
    """The targets each stream scores, as ranges [begin, end) that tile ``range(targets)``."""
    edges = np.linspace(0, targets, streams + 1).round().astype(int)
    return [(int(a), int(b)) for a, b in zip(edges[:-1], edges[1:], strict=True) if b > a]


def read_streams(
    model: CharLSTM,
    tokens: np.ndarray,
    rates: DynamicRates,
    rms: dict[str, torch.Tensor],
    streams: int | None = None,
    at_once: int | None = None,
    tally: Tally | None = None,
) -> np.ndarray:
    """The score of each of ``tokens[1:]``, read in ``streams`` (by default
    :func:`stream_count`) contiguous pieces, each by its own reader from the trained weights; a
    piece after the first starts from the state of the ``WARM`` tokens before it."""
    tally = tally or Tally()
    targets = len(tokens) - 1
    bounds = stream_bounds(targets, streams or stream_count(targets))

    def piece(begin: int, end: int) -> Callable[[], np.ndarray]:
        def read() -> np.ndarray:
            reader = DynamicReader(model, rms)
            start = reader.warm_state(tokens[max(0, begin - WARM) : begin])
            return reader.scores(tokens[begin : end + 1], rates, start, tally)

        return read

    parts = in_parallel([piece(a, b) for a, b in bounds], at_once or workers(), tally)
    return np.concatenate(parts) if parts else np.zeros(0, np.float32)


def char_count(targets: np.ndarray, char_starts: np.ndarray | None) -> int:
    """The characters among ``targets``: the tokens that begin one."""
    return len(targets) if char_starts is None else int(char_starts[targets].sum())


def mean_loss(losses: np.ndarray, targets: np.ndarray, char_starts: np.ndarray | None) -> float:
    """Nats per character: the sum over the targets, divided by those that begin a character."""
    return float(losses.astype(np.float64).sum() / max(char_count(targets, char_starts), 1))


def fit_size(train_len: int, fit_chars: int = FIT_CHARS) -> int:
    """The tokens of a training split of ``train_len`` the rates are fitted on: ``fit_chars``,
    but no more than a quarter of it."""
    return max(1, min(fit_chars, train_len // 4))


def fit_work(train_len: int) -> int:
    """The tokens :func:`fit_rates` scores with its default grid: every point reads the held-out end."""
    return (1 + len(LR_GRID) * len(DECAY_GRID)) * (fit_size(train_len) - 1)


def fit_split(train_tokens: np.ndarray, fit_chars: int) -> tuple[np.ndarray, np.ndarray]:
    """The training split as the fit reads it: the rest, for the gradient statistics, and its
    last ``fit_chars`` tokens, which the grid is scored on."""
    cut = len(train_tokens) - fit_chars
    return train_tokens[:cut], train_tokens[cut:]


def fit_rates(
    model: CharLSTM,
    train_tokens: np.ndarray,
    char_starts: np.ndarray | None = None,
    fit_chars: int = FIT_CHARS,
    lr_grid: tuple[float, ...] = LR_GRID,
    decay_grid: tuple[float, ...] = DECAY_GRID,
    segment: int = SEGMENT,
    tally: Tally | None = None,
) -> tuple[DynamicRates, dict[str, torch.Tensor]]:
    """The rates that give the lowest dynamic loss on the last ``fit_chars`` tokens of the
    training split, ``train_tokens`` (the gradient statistics come from the rest of it), and the
    gradient statistics: nothing of the validation split is read. Each grid point's tokens are
    counted in ``tally`` (:func:`fit_work` of them in all)."""
    rest, held_out = fit_split(train_tokens, fit_size(len(train_tokens), fit_chars))
    rms = gradient_rms(model, rest, segment)
    targets = np.asarray(held_out[1:], dtype=np.int64)
    grid = [DynamicRates(0.0, 0.0, segment)] + [DynamicRates(lr, d, segment) for lr in lr_grid for d in decay_grid]
    tally = tally or Tally()

    def point(rates: DynamicRates) -> Callable[[], float]:
        return lambda: mean_loss(DynamicReader(model, rms).scores(held_out, rates, tally=tally), targets, char_starts)

    static, *losses = in_parallel([point(rates) for rates in grid], workers(), tally)  # one stream each, in threads
    fit_chars = len(held_out)
    best = DynamicRates(0.0, 0.0, segment, fit_chars, static, static)
    for rates, loss in zip(grid[1:], losses, strict=True):
        if loss < best.dynamic_loss:
            best = DynamicRates(rates.lr, rates.decay, segment, fit_chars, static, loss)
    return best, rms


@dataclass(frozen=True)
class DynamicResult:
    """A text's loss read statically and dynamically, and the time each took."""

    static_loss: float
    dynamic_loss: float
    chars: int
    static_seconds: float
    dynamic_seconds: float
    rates: DynamicRates
    rates_from: RatesFrom = RatesFrom.CHECKPOINT
    streams: int = 1  # both readings' contiguous pieces, each from the trained weights

    def to_dict(self) -> dict:
        plain = {k: getattr(self, k) for k in self.__dataclass_fields__ if k != "rates"}
        return {**plain, "rates": self.rates.to_dict(), "rates_from": self.rates_from.value}


def dynamic_loss(
    model: CharLSTM,
    tokens: np.ndarray,
    rates: DynamicRates,
    rms: dict[str, torch.Tensor],
    char_starts: np.ndarray | None = None,
    streams: int | None = None,
    tally: Tally | None = None,
) -> float:
    """Nats per character of ``tokens`` read with dynamic evaluation, in ``streams`` (by default
    one per ``STREAM_TOKENS``)."""
    losses = read_streams(model, tokens, rates, rms, streams, tally=tally)
    return mean_loss(losses, np.asarray(tokens[1:], dtype=np.int64), char_starts)


def rates_for(
    checkpoint: Checkpoint,
    model: CharLSTM,
    train_tokens: np.ndarray,
    char_starts: np.ndarray | None,
    tally: Tally | None = None,
) -> tuple[DynamicRates, dict[str, torch.Tensor], RatesFrom]:
    """The checkpoint's rates, or rates fitted now on its training split (``train_tokens``); the
    gradient statistics, gathered again on the same tokens as the fit's (seconds; kept, they
    would double the file); where the rates came from.

    Fitted rates are kept in the checkpoint's file when that is safe: a ``.pt`` in the current
    format whose weights are still those fitted on (a run may have written it meanwhile). The
    file is read again and written with the rates added, so nothing newer in it is lost."""
    if checkpoint.dynamic:
        rates = DynamicRates.from_dict(checkpoint.dynamic)
        rest, _ = fit_split(train_tokens, rates.fitted_chars)
        return rates, gradient_rms(model, rest, rates.segment), RatesFrom.CHECKPOINT
    rates, rms = fit_rates(model, train_tokens, char_starts, tally=tally)
    checkpoint.dynamic = rates.to_dict()
    return rates, rms, _keep(checkpoint)


def _keep(checkpoint: Checkpoint) -> RatesFrom:
    """Write the checkpoint's rates into its file where that is safe (see :func:`rates_for`)."""
    path = checkpoint.path
    if path is None or path.suffix != ".pt" or checkpoint.file_version != FORMAT_VERSION:
        return RatesFrom.FITTED_NOT_KEPT
    try:
        on_disk = load_checkpoint(path)
        same = on_disk.model.keys() == checkpoint.model.keys() and all(
            torch.equal(on_disk.model[k], checkpoint.model[k]) for k in checkpoint.model
        )
        if not same or on_disk.dynamic:
            return RatesFrom.FITTED_NOT_KEPT
        on_disk.dynamic = checkpoint.dynamic
        on_disk.save(path)
    except UserError:  # gone, damaged or unwritable meanwhile: the measurement stands
        return RatesFrom.FITTED_NOT_KEPT
    return RatesFrom.FITTED
