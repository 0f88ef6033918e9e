"""The training loop: steps over contiguous streams (``step.py``), the schedule, and the cadence
of logging, evaluation and saving. It reports through a callback of events (``events.py``);
nothing here prints.
"""

from __future__ import annotations

import contextlib
import math
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass

import torch

from charlstm.choices import StopReason
from charlstm.config import SampleConfig
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM, first_stream
from charlstm.options import option
from charlstm.sampling.draw import compile_kernels, draw_samples
from charlstm.sampling.stepper import Stepper
from charlstm.store.checkpoint import BEST, LAST, resume_command
from charlstm.store.metrics import end_record
from charlstm.training.average import decay
from charlstm.training.distributed import max_all, sum_all
from charlstm.training.evaluate import EvalInterrupted, EvalResult, evaluate
from charlstm.training.events import Compiling, Evaluated, EventFn, Finished, Progress, Started, TrainResult, VocabStats
from charlstm.training.presets import Sizing
from charlstm.training.run import Run, log_metric, open_event_log, save, target_epochs
from charlstm.training.schedule import get_lr, plateau_update
from charlstm.training.step import train_step
from charlstm.validate import MAX_SEED

PREVIEW_TEMPERATURE = 0.8
# The averaged weights are evaluated from this share of the budget on: before it, with a horizon
# of a share of the run, they are mostly the weights of a model still learning fast.
AVERAGED_FROM = 0.5


@dataclass
class StopFlag:
    """Set by a signal handler; the loop finishes its step, saves and returns."""

    signum: int | None = None


@contextlib.contextmanager
def stop_on_signals(flag: StopFlag) -> Iterator[StopFlag]:
    """While inside, SIGINT and SIGTERM ask the loop to stop after the current step."""

    def handler(signum, frame):  # noqa: ARG001 - signal handler signature
        if flag.signum is not None and signum == signal.SIGINT:
            raise KeyboardInterrupt  # a second Ctrl-C stops at once
        flag.signum = signum

    previous = {s: signal.signal(s, handler) for s in (signal.SIGINT, signal.SIGTERM)}
    try:
        yield flag
    finally:
        for s, h in previous.items():
            signal.signal(s, h)


def next_batch(run: Run) -> tuple[torch.Tensor, torch.Tensor]:
    """The chunk at the run's cursor; a new pass starts from zero state."""
    st = run.state
    if st.chunk >= len(run.data.batches):
        st.epoch, st.chunk, run.hidden = st.epoch + 1, 0, None
    if st.chunk == 0:
        run.hidden = None
    x, y = run.data.batches.batch(st.chunk)
    device = run.learner.device
    pin = device.type == "cuda"
    return (t.pin_memory().to(device, non_blocking=True) if pin else t for t in (x, y))  # type: ignore[return-value]


def current_lr(run: Run) -> float:
    t = run.tcfg
    return get_lr(
        t.schedule, t.lr, run.state.step, run.fraction(), t.warmup_steps, t.min_lr_ratio, run.state.plateau_scale
    )


def stop_reason(run: Run, flag: StopFlag | None) -> StopReason | None:
    """Why the run stops now, if it does. Several processes agree first: a stop requested of any
    of them stops all, and the time trained is the longest of theirs, so all stop at one step."""
    t, st = run.tcfg, run.state
    if _stop_asked(run, flag):
        return StopReason.SIGNAL
    if t.max_steps and st.step >= t.max_steps:
        return StopReason.MAX_STEPS
    if run.epoch_float >= target_epochs(t) - 1e-12:
        return StopReason.EPOCHS
    if t.max_time and st.elapsed >= t.max_time:
        return StopReason.MAX_TIME
    return None


def _stop_asked(run: Run, flag: StopFlag | None) -> bool:
    """Whether a signal asks the run to stop. Several processes decide on the values they
    exchanged, never on their own flag afterwards: a signal that lands just after the exchange
    waits for the next one, so that no process stops a step before the others (and then waits
    in a different collective than theirs)."""
    if not run.procs.many:
        return flag is not None and flag.signum is not None
    asked, run.state.elapsed = max_all(run.procs, [float((flag and flag.signum) or 0), run.state.elapsed])
    if asked and flag is not None:
        flag.signum = int(asked)
    return bool(asked)


def preview(run: Run) -> str:
    """A short sample from the current weights, seeded by step so a run's previews repeat (shown by
    the main process only)."""
    if run.tcfg.sample_chars <= 0 or not run.procs.main:
        return ""
    seed = (run.tcfg.seed + run.state.step) % (MAX_SEED + 1)  # any --seed, even the largest, stays valid
    cfg = SampleConfig(length=run.tcfg.sample_chars, temperature=PREVIEW_TEMPERATURE, seed=seed)
    start = None if run.hidden is None else first_stream(run.hidden)
    samples = draw_samples(Stepper(run.learner.model), run.data.corpus.vocab, cfg, start)
    return "".join(pieces[0] for pieces in samples.pieces)


def run_eval(run: Run, on_event: EventFn, stop: StopFlag | None = None, final: bool = False) -> bool:
    """Evaluate (a spread of ``--eval-chars`` of) the validation split, and the averaged weights
    too once they have something to show (from ``AVERAGED_FROM`` of the budget, and at the end);
    update best/last, write checkpoints and a metrics line. A stop requested meanwhile ends it
    early: returns False."""
    st, started = run.state, time.perf_counter()
    averaged = run.averager is not None and (final or run.fraction() >= AVERAGED_FROM)
    try:
        result = _evaluate(run, run.learner.model, stop)
        average = _evaluate(run, run.averager.model, stop) if averaged else None  # type: ignore[union-attr]
    except EvalInterrupted:  # every process stops at the same chunk; each keeps the signal that stopped them
        if stop is not None and run.procs.many:
            stop.signum = int(max_all(run.procs, [float(stop.signum or 0)])[0]) or stop.signum
        return False
    seconds = time.perf_counter() - started
    loss = result.loss if average is None else min(result.loss, average.loss)
    is_best = loss < st.best_val_loss
    if run.tcfg.schedule == "plateau" and math.isfinite(st.best_val_loss):
        st.plateau_scale = plateau_update(st.plateau_scale, loss, st.best_val_loss)  # the better of the two
    st.last_val_loss = result.loss
    if is_best:
        st.best_val_loss, st.best_averaged = loss, average is not None and average.loss < result.loss
    record = {"type": "eval", "step": st.step, "epoch": round(run.epoch_float, 4), "val_loss": result.loss}
    if average is not None:
        st.averaged_val_loss = average.loss
        run.averager.warm = average.first_state  # type: ignore[union-attr]  # best.pt keeps it with them
        record["averaged_val_loss"] = average.loss
    record.update(val_bpc=result.bpc, best=is_best, elapsed=round(st.elapsed, 3))
    log_metric(run, {**record, "eval_chars": result.chars, "eval_seconds": round(seconds, 3)})
    save(run, (LAST, BEST) if is_best else (LAST,))
    averaged_loss = None if average is None else average.loss
    sample = preview(run)
    if run.event_log is not None:
        run.event_log.sample(st.step, sample)
    on_event(Evaluated(st.step, result.loss, is_best, sample, st.elapsed, averaged_loss, st.best_averaged))
    return True


def _evaluate(run: Run, model: CharLSTM, stop: StopFlag | None) -> EvalResult:
    return evaluate(
        model,
        run.data.val_tokens,
        run.tcfg.seq_len,
        run.learner.device,
        run.state.precision,
        char_starts=run.data.corpus.vocab.char_starts(),
        max_chars=run.tcfg.eval_chars,
        should_stop=lambda: stop is not None and stop.signum is not None,
        procs=run.procs,
    )


@dataclass
class _Session:
    """This session of a run: when and where it started, and what it has done since."""

    on_event: EventFn
    stop: StopFlag | None
    t0: float  # perf_counter at the start
    elapsed0: float  # seconds trained before it
    fraction0: float  # share of the budget spent before it
    step0: int
    window: _Window
    evaluated_at: int = -1
    saved_at: int = -1
    last_loss: float = math.nan  # mean training loss at the last sync: the result's train loss

    @classmethod
    def start(cls, run: Run, on_event: EventFn, stop: StopFlag | None) -> _Session:
        now, st = time.perf_counter(), run.state
        window = _Window(now, st.step, torch.zeros(2, device=run.learner.device))
        return cls(on_event, stop, now, st.elapsed, run.fraction(), st.step, window)

    def tick(self, run: Run) -> None:
        run.state.elapsed = self.elapsed0 + time.perf_counter() - self.t0


@dataclass
class _Window:
    """Throughput and loss bookkeeping between two log lines."""

    time: float
    step: int
    loss: torch.Tensor  # (2,): nats and characters summed since the last fold


def _fold_loss(run: Run, window: _Window) -> float:
    """Fold the window's loss into the run state (one host sync) and return the mean per
    character so far, over every process's streams."""
    st = run.state
    nats, chars = sum_all(run.procs, window.loss.tolist())
    window.loss.zero_()
    if not (math.isfinite(nats) and math.isfinite(chars)):
        return math.nan
    st.loss_sum, st.loss_count = st.loss_sum + nats, st.loss_count + int(chars)
    return st.loss_sum / max(st.loss_count, 1)


def _log(run: Run, session: _Session, mean_loss: float, lr: float) -> None:
    st, window, now = run.state, session.window, time.perf_counter()
    cps = (st.step - window.step) * run.tcfg.batch_size * run.tcfg.seq_len / max(now - window.time, 1e-9)
    frac, f0 = run.fraction(), session.fraction0
    remaining = (1 - frac) * (now - session.t0) / (frac - f0) if frac > f0 else None
    record = {"type": "train", "step": st.step, "epoch": round(run.epoch_float, 4), "loss": mean_loss, "lr": lr}
    log_metric(run, {**record, "chars_per_sec": round(cps, 1), "elapsed": round(st.elapsed, 3)})
    session.on_event(Progress(st.step, run.epoch_float, mean_loss, lr, cps, st.elapsed, frac, remaining))
    st.loss_sum, st.loss_count = 0.0, 0
    window.time, window.step = now, st.step


def _announce(run: Run, on_event: EventFn, stop: StopFlag | None) -> None:
    """Emit ``Started``; refuse to continue a run whose budget is already spent."""
    st, t = run.state, run.tcfg
    reason = stop_reason(run, stop)
    if reason is not None and reason is not StopReason.SIGNAL:
        raise UserError(
            f"the run already finished at step {st.step} ({option(reason)} reached), expected a larger "
            f"--max-steps, --epochs or --max-time to train longer"
        )
    data = run.data
    stats, vocab = data.corpus.stats, data.corpus.vocab
    byte_tokens = len(vocab.byte_values) if vocab.byte_fallback else 0
    on_event(
        Started(
            run.run_dir,
            run.learner.model.num_params(),
            str(run.learner.device),
            st.precision,
            t.batch_size * t.seq_len,
            len(data.batches.tokens),
            len(data.val_tokens),
            st.step,
            vocab=VocabStats(len(vocab.chars), byte_tokens, stats.own_coverage),
            skipped_files=list(stats.skipped_files),
            processes=run.procs.world,
            saved_processes=run.saved_world,
            sizing=None if st.step or not st.sizing else Sizing.from_dict(st.sizing),
            merge=None if st.step else run.merge,
            base=run.lineage.path if run.merge and run.lineage else None,
        )
    )


def _after_step(run: Run, session: _Session, lr: float) -> StopReason | None:
    """Log, evaluate and save when due; "nan" for a loss that went bad, "signal" for a stop
    requested during an evaluation, else None."""
    st, t = run.state, run.tcfg
    due_log, due_eval, due_save = (st.step % n == 0 for n in (t.log_every, t.eval_every, t.save_every))
    if due_log or due_eval or due_save:  # the only host syncs: fold the loss, refuse to save NaN
        mean_loss = session.last_loss = _fold_loss(run, session.window)
        if not math.isfinite(mean_loss):
            return StopReason.NAN
        if due_log:
            _log(run, session, mean_loss, lr)
    if due_eval:
        if not run_eval(run, session.on_event, session.stop):
            return StopReason.SIGNAL
        session.evaluated_at = session.saved_at = st.step
        session.window.time = time.perf_counter()
    elif due_save:
        save(run, (LAST,))
        session.saved_at = st.step
    return None


def _close(run: Run, session: _Session, reason: StopReason) -> StopReason:
    """End the run: fold the steps since the last sync, then evaluate (budget spent) and save."""
    if reason is StopReason.NAN or not math.isfinite(_fold_loss(run, session.window)):
        return StopReason.NAN
    if reason is not StopReason.SIGNAL and session.evaluated_at != run.state.step:
        if run_eval(run, session.on_event, session.stop, final=True):
            return reason
        reason = StopReason.SIGNAL  # stopped during the final evaluation
    if session.saved_at != run.state.step:
        save(run, (LAST,))
    return reason


def train(run: Run, on_event: EventFn | None = None, stop: StopFlag | None = None) -> TrainResult:
    """Train until the budget is spent or ``stop`` is set; evaluate and checkpoint on the way. The
    run's log ends with a record of how the session ended, whether it returns or raises."""
    on_event = on_event or (lambda event: None)
    _announce(run, on_event, stop)
    open_event_log(run)  # once the run is sure to train: a refused resume leaves no file
    try:
        result = _train(run, on_event, stop)
    except BaseException as e:
        interrupted = isinstance(e, KeyboardInterrupt)  # a second Ctrl-C
        error = None if interrupted else str(e) if isinstance(e, UserError) else f"{type(e).__name__}: {e}"
        reason = StopReason.SIGNAL if interrupted else StopReason.ERROR
        _log_end(run, reason, signal.SIGINT if interrupted else None, error)
        raise
    _log_end(run, result.stopped_by, result.signal, result.failure)
    return result


def _log_end(run: Run, reason: StopReason, signum: int | None, error: str | None) -> None:
    """Append the end record, and close the TensorBoard log; a log that cannot be written then (a
    full disk) is left as it is."""
    try:
        log_metric(run, end_record(run.state.step, run.state.elapsed, reason, signum, error))
    except (OSError, UserError):
        pass
    with contextlib.suppress(OSError, UserError):
        if run.event_log is not None:
            run.event_log.close()


def _compile_sampling(on_event: EventFn) -> None:
    """Compile the sampling kernels (previews, then ``charlstm sample``): once per installation, and
    not on the run's clock. A compile that takes a while is announced, and its end too."""
    announced = False

    def announce() -> None:
        nonlocal announced
        announced = True
        on_event(Compiling())

    seconds = compile_kernels(on_slow=announce)
    if announced:
        on_event(Compiling(done=True, seconds=seconds))


def _train(run: Run, on_event: EventFn, stop: StopFlag | None) -> TrainResult:
    st = run.state
    if run.tcfg.sample_chars > 0 and run.procs.main:
        _compile_sampling(on_event)
    session, reason = _Session.start(run, on_event, stop), None
    while reason is None:
        lr = current_lr(run)
        x, y = next_batch(run)
        frozen = run.fraction() < run.tcfg.freeze_embedding
        summed, run.hidden = train_step(run.learner, x, y, run.hidden, lr, frozen)
        session.window.loss += summed
        st.step, st.chunk = st.step + 1, st.chunk + 1
        session.tick(run)
        if run.averager is not None:
            run.averager.update(run.learner.model, decay(st.step, run.fraction(), run.tcfg.average))
        reason = _after_step(run, session, lr)
        session.tick(run)
        reason = reason or stop_reason(run, stop)
    reason = _close(run, session, reason)
    result = _result(run, reason, session)
    on_event(Finished(result))
    return result


def _result(run: Run, reason: StopReason, session: _Session) -> TrainResult:
    """How the run ended; speed counts this session only."""
    st = run.state
    chars = (st.step - session.step0) * run.tcfg.batch_size * run.tcfg.seq_len
    return TrainResult(
        run.run_dir,
        st.step,
        run.epoch_float,
        st.elapsed,
        st.best_val_loss,
        st.last_val_loss,
        session.last_loss,
        chars / max(st.elapsed - session.elapsed0, 1e-9),
        reason,
        resume_command(run.run_dir),
        session.stop.signum if session.stop else None,
        main_process=run.procs.main,
    )
