"""The Python API: load a trained model and generate, stream or score text; train a model.

    import charlstm
    model = charlstm.load("checkpoints/tinyshakespeare")  # a run directory, .pt or .safetensors
    print(model.generate("ROMEO:", length=300, temperature=0.8, seed=1))
    result = charlstm.train(corpus="my.txt", out="runs/mine", max_time=60, hidden=256)

Keyword names are the command line's option names, and the same options give the same text
as ``charlstm sample``. A user mistake raises :class:`charlstm.UserError` (a ``ValueError``)
with the command line's message. Loading never runs code from the file.
"""

from __future__ import annotations

import contextlib
import difflib
import functools
import itertools
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from charlstm.config import (
    TRAINING,
    EvalConfig,
    ExplainConfig,
    ModelConfig,
    SampleConfig,
    training_configs,
)
from charlstm.data.sources import ProgressFn
from charlstm.data.vocab import CharVocab
from charlstm.device import resolve_device
from charlstm.errors import UserError
from charlstm.export import Exported
from charlstm.export import export as export_model
from charlstm.insight.explain import ExplainReport, explain_checkpoint
from charlstm.net.model import CharLSTM
from charlstm.options import declared
from charlstm.sampling.draw import Samples, compile_kernels, draw_samples
from charlstm.sampling.scoring import score_tokens
from charlstm.sampling.stepper import Stepper, resolve_precision
from charlstm.store import metrics
from charlstm.store.card import run_name
from charlstm.store.checkpoint import BEST, LAST, Checkpoint, load_checkpoint
from charlstm.training import distributed, words
from charlstm.training.distributed import Processes
from charlstm.training.evaluate import EvalResult, evaluate, evaluate_checkpoint, read_dynamically
from charlstm.training.events import Compiling, Evaluated, Event, EventFn, Finished, Progress, Started, TrainResult
from charlstm.training.loop import StopFlag, stop_on_signals
from charlstm.training.loop import train as train_loop
from charlstm.training.presets import SIZED
from charlstm.training.resume import resume_run
from charlstm.training.run import Run, new_run

__all__ = [
    "Model",
    "describe",
    "evaluate_checkpoint",
    "explain",
    "export",
    "load",
    "sample",
    "serve",
    "serve_app",
    "train",
]

_SAMPLE_DEFAULTS = SampleConfig()


class Model:
    """A trained model, ready to generate and score text (on the CPU unless loaded elsewhere)."""

    def __init__(self, checkpoint: Checkpoint, device: str = "cpu"):
        self.checkpoint = checkpoint
        self.module: CharLSTM = checkpoint.build_model(resolve_device(device))  # the torch module, in eval mode
        self._steppers: dict[str, Stepper] = {}

    @property
    def vocab(self) -> CharVocab:
        """The characters the model knows."""
        return self.checkpoint.vocab

    @property
    def config(self) -> ModelConfig:
        """The architecture: vocabulary size, embedding, hidden units, layers, dropout."""
        return self.checkpoint.model_config

    @property
    def num_params(self) -> int:
        return self.module.num_params()

    def __repr__(self) -> str:
        c = self.config
        return f"<charlstm.Model {c.layers}x{c.hidden}, {self.num_params:,} parameters, from {self.checkpoint.path}>"

    def sample(self, config: SampleConfig) -> Samples:
        """Start drawing ``config.num_samples`` samples side by side; what ``charlstm sample`` runs."""
        precision = resolve_precision(config.precision, self.checkpoint.progress.precision)
        if precision not in self._steppers:  # arranging the weights costs a copy of them: done once
            self._steppers[precision] = Stepper(self.module, precision)
        return draw_samples(self._steppers[precision], self.vocab, config, self.checkpoint.warm_state())

    def stream(self, prompt: str = "", length: int = _SAMPLE_DEFAULTS.length, **options: Any) -> Iterator[str]:
        """The prompt, then the generated text a piece at a time (``length`` tokens in all: characters,
        unless the model writes some as byte tokens).

        ``options``: the sampling options of :meth:`generate`; they are checked here, before the
        first piece is asked for.
        """
        samples = self.sample(SampleConfig(prompt=prompt, length=length, **_sampling_options(options)))
        return itertools.chain([samples.prompt], (pieces[0] for pieces in samples.pieces))

    def generate(
        self,
        prompt: str = "",
        length: int = _SAMPLE_DEFAULTS.length,
        temperature: float = _SAMPLE_DEFAULTS.temperature,
        top_k: int | None = None,
        top_p: float | None = None,
        seed: int | None = None,
        unknown: str = _SAMPLE_DEFAULTS.unknown,
        precision: str = _SAMPLE_DEFAULTS.precision,
        **controls: Any,
    ) -> str:
        """The prompt followed by ``length`` generated tokens (characters, unless the model writes some
        as byte tokens): the text ``charlstm sample`` prints for the same options (without its final newline).

        Args:
            prompt: text the model continues; characters it never saw are an error, or dropped
                with ``unknown="skip"``.
            temperature: softmax temperature; 0 is greedy.
            top_k: sample among the k likeliest characters (None or 0: all).
            top_p: sample within the smallest set of probability >= p (None: all).
            seed: the same seed gives the same text; None draws a random one.
            precision: weights the step reads: "fp32", "bf16" or "auto" (as the model trained).
            controls: ``min_p``, ``presence_penalty``, ``frequency_penalty``, ``repetition_penalty``,
                ``repetition_window``, ``ban`` ("@#"), ``bias`` ("e=-2,x=1.5") and ``logit_bias``
                ({token id: bias}), as ``charlstm sample``'s options of those names.
        """
        options = dict(temperature=temperature, top_k=top_k, top_p=top_p, seed=seed, unknown=unknown, **controls)
        return "".join(self.stream(prompt, length, precision=precision, **options))

    def generate_many(
        self, prompt: str = "", n: int = 8, length: int = _SAMPLE_DEFAULTS.length, **options: Any
    ) -> list[str]:
        """``n`` samples drawn side by side (faster than one after another), each the prompt followed
        by ``length`` tokens; ``options`` as for :meth:`generate`."""
        config = SampleConfig(prompt=prompt, length=length, num_samples=n, **_sampling_options(options))
        samples = self.sample(config)
        texts = [[samples.prompt] for _ in range(n)]
        for pieces in samples.pieces:
            for text, piece in zip(texts, pieces, strict=True):
                text.append(piece)
        return ["".join(text) for text in texts]

    def score(self, text: str) -> np.ndarray:
        """The model's log-probability (nats) of each character of ``text`` (len(text),) given those
        before it, read as ``charlstm eval`` reads a text (from zero, in fp32): the first character,
        which nothing comes before, is NaN, so ``-np.nanmean(model.score(text))`` is
        ``model.evaluate(text).loss``. A character written as bytes gets the sum of its bytes'."""
        self.vocab.check_known(text, "the text", "with byte fallback every text can be scored")
        ids = self.vocab.encode(text)
        scores = score_tokens(self.module, ids)
        logprobs = np.concatenate([[np.nan], scores.logprobs.astype(np.float64)])  # (tokens,)
        return np.add.reduceat(logprobs, np.flatnonzero(self.vocab.char_starts()[ids])) if ids else np.zeros(0)

    def evaluate(self, text: str, seq_len: int = EvalConfig.seq_len, dynamic: bool = False) -> EvalResult:
        """Loss of the model on ``text``: ``.loss`` (nats/char), ``.bpc``, ``.perplexity``, ``.chars``.

        Every character of ``text`` after the first is predicted and scored, in fp32. With
        ``dynamic``, ``.dynamic`` also holds the text read with dynamic evaluation beside its
        static reading (``charlstm eval --dynamic``; the rates fitted on the training corpus at
        first use and kept in the checkpoint).
        """
        config = EvalConfig(seq_len=seq_len, dynamic=dynamic)
        tokens = np.array(self.vocab.encode(text), dtype=np.int64)
        device, starts = self.module.head.weight.device, self.vocab.char_starts()
        result = evaluate(self.module, tokens, config.seq_len, device, char_starts=starts)
        if config.dynamic:
            result.dynamic = read_dynamically(self.checkpoint, tokens)
        return result


def _sampling_options(options: dict[str, Any]) -> dict[str, Any]:
    """Refuse keywords that are not sampling options, with the names that are."""
    allowed = {d.name for d in declared(SampleConfig)} - {"prompt", "length", "num_samples", "logprobs"}  # see score
    _refuse_unknown(options, allowed, "sampling")
    return options


def _refuse_unknown(given: dict[str, Any], allowed: set[str], kind: str) -> None:
    """One error for the first keyword not in ``allowed``, with the closest name when there is one."""
    unknown = sorted(set(given) - allowed)
    if unknown:
        prefixed = sorted(name for name in allowed if name.startswith(unknown[0]))
        close = prefixed[:1] or difflib.get_close_matches(unknown[0], allowed, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise UserError(f"unknown {kind} option {unknown[0]!r}; {hint}expected one of {', '.join(sorted(allowed))}")


def load(path: str | Path, device: str = "cpu") -> Model:
    """A trained model from a run directory (its best.pt), a ``.pt`` checkpoint or a ``.safetensors``
    export, on ``device`` ("cpu", "cuda", "mps" or "auto"); sampling always runs on the CPU."""
    return Model(load_checkpoint(path), device)


def prepare_sampling(on_slow: Callable[[], None] | None = None) -> float:
    """Compile (once per installation) or load the sampling kernels; ``on_slow`` is called when
    that takes a while. Sampling does it on first use anyway: this lets a front end say so."""
    return compile_kernels(on_slow)


def sample(checkpoint: str | Path, config: SampleConfig) -> Samples:
    """Start drawing samples from a checkpoint: ``charlstm sample``."""
    return load(checkpoint).sample(config)


def describe(checkpoint: str | Path) -> dict[str, Any]:
    """What a checkpoint holds, JSON-ready: ``charlstm info``. For a run directory's ``best.pt`` or
    ``last.pt``, also the run's last validation loss and its step from ``metrics.jsonl``
    (``run_last_val_loss``, ``run_last_eval_step``; None where the log has none)."""
    ckpt = load_checkpoint(checkpoint)
    in_run = ckpt.path is not None and ckpt.path.name in (BEST, LAST)
    last = (metrics.last_eval(ckpt.path.parent) if in_run else None) or {}
    return {**ckpt.describe(), "run_last_val_loss": last.get("val_loss"), "run_last_eval_step": last.get("step")}


def export(
    checkpoint: str | Path,
    out: str | Path,
    format: str | None = None,  # noqa: A002 - the option's name
    precision: str = "fp32",
    overwrite: bool = False,
) -> Exported:
    """Write a checkpoint's model to ``out`` (its folder made if missing, an existing file replaced
    only with ``overwrite``) in ``format``, by default the one its suffix names: ``.safetensors``
    (the weights), ``.onnx`` (a step graph, checked with onnxruntime: the ``onnx`` extra) or
    ``.html`` (a page that generates offline; ``precision="bf16"`` halves its weights): ``charlstm export``."""
    ckpt = load_checkpoint(checkpoint)
    return export_model(ckpt, out, run_name(checkpoint, ckpt), format, precision, overwrite)


def explain(checkpoint: str | Path, config: ExplainConfig) -> ExplainReport:
    """Colour a text by what the model's cells hold, find the cells that follow a few text
    features, and write the page to ``config.out``: ``charlstm explain``."""
    return explain_checkpoint(checkpoint, config)


def train(
    corpus: str | None = None,
    *,
    resume: str | Path | None = None,
    overwrite: bool = False,
    progress: bool = False,
    on_event: EventFn | None = None,
    on_reading: ProgressFn | None = None,
    keep_freed_memory: bool = False,
    **options: Any,
) -> TrainResult:
    """Train a model (from a trained one with ``init_from=BASE``: fine-tuning), or continue one with
    ``resume=RUN_DIR``; returns how the run ended.

    ``options`` are the training options by their command-line names (``out``, ``max_time``,
    ``hidden``, ``lr``, ...; see ``charlstm train --help``). ``progress=True`` shows a
    ``tqdm.auto`` bar (a notebook gets the widget); ``on_event`` receives every event of
    ``charlstm.training.events``. Ctrl-C (or SIGTERM) stops after the current step and saves
    ``last.pt``; the result then says ``stopped_by="signal"``. A loss that turns NaN raises
    ``UserError`` after the run's files are saved. Started by ``torchrun``, every process calls
    this and together they train one model; only the main process reports.

    ``keep_freed_memory=True`` sets glibc's malloc, for the rest of the process, to keep what a CPU step
    frees for the next (faster steps, peak memory kept): ``charlstm train`` passes it (``device.py``).
    """
    given = {k: os.fspath(v) if isinstance(v, os.PathLike) else v for k, v in {"corpus": corpus, **options}.items()}
    given = {k: v for k, v in given.items() if v is not None}
    _check_option_names(given)
    procs = distributed.launched()  # one process, or those torchrun started: only the main one reports
    on_event, on_reading = (on_event, on_reading) if procs.main else (None, None)
    bar = _TqdmBar() if progress and procs.main else None
    distributed.start(procs)
    finished = False
    try:
        make_run = functools.partial(_run_to_train, given, resume, overwrite, on_reading, procs, keep_freed_memory)
        result = _train_run(make_run, [on_event, bar])
        finished = True
    finally:
        if bar is not None:
            bar.close()
        distributed.stop(procs, finished)
    if result.failure:
        raise UserError(result.failure)
    return result


def _train_run(make_run: Callable[[], Run], listeners: list[EventFn | None]) -> TrainResult:
    """The run ``make_run`` builds, trained in a frame of its own: when it returns, the run (and the
    process group its wrapped model holds) can be freed before the group is left (``distributed.stop``)."""
    run = make_run()
    with _signals_stop(StopFlag()) as flag:
        return train_loop(run, _broadcast([fn for fn in listeners if fn is not None]), flag)


def _run_to_train(
    given: dict[str, Any],
    resume: str | Path | None,
    overwrite: bool,
    on_reading: ProgressFn | None,
    procs: Processes,
    keep_memory: bool,
) -> Run:
    """A run resumed from ``resume``, or a new one from the ``given`` options."""
    if resume is not None:
        return resume_run(resume, given, progress=on_reading, procs=procs, keep_memory=keep_memory)
    tcfg, mcfg = training_configs(given)
    unset = frozenset(SIZED) - given.keys()  # left to the preset the budget calls for
    return new_run(tcfg, mcfg, overwrite, on_reading, procs, unset, keep_memory, frozenset(given))


def _broadcast(listeners: list[EventFn]) -> EventFn:
    """One event callback that passes each event to every listener."""

    def emit(event: Event) -> None:
        for listener in listeners:
            listener(event)

    return emit


def _check_option_names(given: dict[str, Any]) -> None:
    _refuse_unknown(given, {d.name for d in declared(*TRAINING)}, "training")


def _signals_stop(flag: StopFlag) -> contextlib.AbstractContextManager[StopFlag]:
    """Ctrl-C and SIGTERM stop the loop gracefully, where Python lets us handle them (main thread)."""
    if threading.current_thread() is threading.main_thread():
        return stop_on_signals(flag)
    return contextlib.nullcontext(flag)


class _TqdmBar:
    """Training events as a ``tqdm.auto`` bar over the budget, with loss and speed beside it."""

    FORMAT = "{desc}: {percentage:3.0f}%|{bar}| {elapsed}<{remaining}{postfix}"

    def __init__(self) -> None:
        from tqdm.auto import tqdm

        self.bar = tqdm(total=1.0, desc="train", bar_format=self.FORMAT, dynamic_ncols=True)

    def __call__(self, event: Event) -> None:
        if isinstance(event, Started):
            for line in (words.start(event), *words.start_notes(event)):
                self.bar.write(line)
        elif isinstance(event, Compiling):
            self.bar.write(words.compiling(event))
        elif isinstance(event, Progress):
            self.bar.update(event.fraction - self.bar.n)
            self.bar.set_postfix_str(f"step {event.step}, loss {event.loss:.3f}, {event.chars_per_sec:,.0f} chars/s")
        elif isinstance(event, Evaluated):
            self.bar.write(words.evaluated(event))
        elif isinstance(event, Finished) and event.result.stopped_by.finished:
            self.bar.update(1.0 - self.bar.n)  # the budget is spent, whatever the last log line said

    def close(self) -> None:
        self.bar.close()


from charlstm.api.serving import SERVE_EXTRA, check_serve_extra, serve, serve_app  # noqa: E402, F401  (they use load)
