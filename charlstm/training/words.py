"""Training's events and results in words: the one place that phrases them, for every front end
(the CLI's rich view and the Python API's tqdm bar). Plain text, no markup; a front end styles it."""

from __future__ import annotations

import math
import signal
from pathlib import Path

from charlstm.choices import ChosenBy, StopReason
from charlstm.config import DEFAULT_EPOCHS
from charlstm.options import option
from charlstm.store.checkpoint import BEST as BEST_FILE
from charlstm.store.checkpoint import LAST as LAST_FILE
from charlstm.store.checkpoint import Lineage
from charlstm.training.events import Compiling, Evaluated, Familiarity, Progress, Started, TrainResult, VocabStats
from charlstm.training.presets import Sizing

BEST = " (best)"  # the mark of an evaluation that set a new best, as evaluated() writes it
SKIPPED_SHOWN = 10  # files named in the warning about files that are not text


def seconds(s: float | None) -> str:
    """A duration for people: "42s", "2m00s"; "?" when unknown."""
    if s is None or not math.isfinite(s):
        return "?"
    m, sec = divmod(int(round(s)), 60)
    return f"{m}m{sec:02d}s" if m else f"{sec}s"


def loss(value: float) -> str:
    return f"{value:.4f}" if math.isfinite(value) else "-"


def nats(value: float) -> str:
    """A loss with its units: "1.4254 nats/char (2.0564 bpc)"; dashes when never measured."""
    return f"{loss(value)} nats/char ({loss(value / math.log(2))} bpc)"


def vocab(stats: VocabStats) -> str:
    """ "65 characters", or own tokens, their share of the text and the byte tokens."""
    if not stats.byte_tokens:
        return f"{stats.own} characters"
    share = f"{stats.own_coverage:.2%} of the text"
    return f"{stats.own} characters with their own token ({share}) and {stats.byte_tokens} byte tokens for the rest"


def sizing(s: Sizing) -> str:
    """The preset chosen for a new run and why; empty when the preset set nothing (the user gave
    every sized option, or a checkpoint from before sizing)."""
    base = "".join(
        f"; {values(part)} {why}"
        for part, why in ((s.from_base, "from the base"), (s.fine_tuned, "for fine-tuning"))
        if part
    )
    if s.by_reading:
        scratch = " as from scratch" if s.far == 1 else ""
        base += f"; {values(s.by_reading)}{scratch} for a text {distance(s)}"
    if not s.applied and not s.by_reading:
        return base[2:]
    if s.chosen_by == ChosenBy.PRESET:
        why = "as --preset asks"
    else:
        passes = s.passes or 0.0
        shown = f"{passes:,.0f}" if passes >= 10 else f"{passes:.2g}"
        budget = f"the default {DEFAULT_EPOCHS:g} epochs" if s.default_budget else "the budget"
        model = "the base's model and chunk" if s.from_base else "the small preset"  # what was timed
        why = f"{budget} buys about {shown} passes over the text with {model}"
        if s.chars_per_s:
            timed = f", the median of {len(s.speed_passes)} timed passes" if s.speed_passes else ""
            why += f", measured at {s.chars_per_s / 1000:.0f}k chars/s here{timed}"
    kept = "".join(f"; {option(k)} as you set" for k in s.kept)
    head = f"sized {s.preset}: {values(s.applied)}" if s.applied else f"sized {s.preset}"
    return f"{head} ({why}{kept}{base})"


def values(options: dict) -> str:
    """Options as a command line gives them: "--hidden 768 --cell lstm"."""
    return " ".join(
        f"{option(k)} {v:g}" if isinstance(v, (int, float)) else f"{option(k)} {v}" for k, v in options.items()
    )


def start(event: Started) -> str:
    """The first line of a session: the model, where it trains, the data, the run directory."""
    resumed = f", resumed at step {event.resumed_step}" if event.resumed_step else ""
    words = f", vocabulary: {vocab(event.vocab)}" if event.vocab else ""
    return (
        f"charlstm {event.params:,} parameters on {event.device} ({event.precision}), "
        f"{event.train_chars:,} training / {event.val_chars:,} validation tokens{words}, "
        f"run directory {event.run_dir}{resumed}"
    )


def merge(event: Started) -> str:
    """Where a fine-tuning run's vocabulary came from; empty for any other run."""
    m = event.merge
    if m is None:
        return ""
    unused = f"; the base's {m.unused} {'character' if m.unused == 1 else 'characters'} that it lacks kept too"
    unused = unused if m.unused else ""
    added = f"{m.added} added" + (f" and {m.added_bytes} byte tokens" if m.added_bytes else "")
    s = event.sizing
    read = ""
    if s is not None and s.base_loss is not None and s.guess_loss is not None:
        better = Familiarity(s.base_loss, s.guess_loss).better
        read = (
            f"; the base reads the text at {s.base_loss:.2f} nats a token, {better:.0%} better than a "
            f"guess's {s.guess_loss:.2f}: a text {distance(s)}"
        )
    return (
        f"started from {event.base}: {m.kept} of the text's characters known to the base, {added} "
        f"({m.added_share:.2%} of the text){unused}{read}"
    )


def distance(s: Sizing) -> str:
    """How far a fine-tuning run's text is from its base's: "near the base's", "far from the
    base's", or "40% of the way to far"."""
    far = s.far or 0.0
    return "near the base's" if far == 0 else "far from the base's" if far == 1 else f"{far:.0%} of the way to far"


def start_notes(event: Started) -> list[str]:
    """The lines after the first: a fine-tuning run's base, the sizing, the processes, a resume's
    new random streams, and the files left out of the corpus."""
    lines = [merge(event), sizing(event.sizing) if event.sizing else ""]
    if event.processes > 1:
        lines.append(f"{event.processes} processes train together (torchrun)")
    if event.saved_processes is not None:
        lines.append(
            f"note: resumed with {event.processes} processes from a run saved by {event.saved_processes}: the same "
            f"global data position, with new random streams for dropout"
        )
    if event.skipped_files:
        files = event.skipped_files
        shown = ", ".join(files[:SKIPPED_SHOWN]) + (" and more" if len(files) > SKIPPED_SHOWN else "")
        lines.append(f"warning: left out {len(files)} files that are not text: {shown}")
    return [line for line in lines if line]


def compiling(event: Compiling) -> str:
    """What the first run after installing waits for, and then how long it took."""
    if event.done:
        return f"compiled the sampling kernels in {seconds(event.seconds)}"
    return "compiling the sampling kernels (once per installation; later runs load them at once)"


def progress(event: Progress) -> str:
    """A log file's progress line: "step 90 (11%)  loss 1.934  lr 2.92e-02  69.9k chars/s  23s left"."""
    left = f"  {seconds(event.remaining)} left" if event.remaining is not None else ""
    return (
        f"step {event.step} ({event.fraction:.0%})  loss {event.loss:.3f}  lr {event.lr:.2e}  "
        f"{event.chars_per_sec / 1000:.1f}k chars/s{left}"
    )


def evaluated(event: Evaluated) -> str:
    """ "step 500: val loss 1.6021 (best), 1m02s trained", with "averaged 1.5987 (best)" after the
    loss when the averaged weights were evaluated too."""
    when = f", {seconds(event.elapsed)} trained" if event.elapsed is not None else ""
    best = BEST if event.is_best and not event.best_averaged else ""
    loss = f"val loss {event.val_loss:.4f}{best}"
    if event.averaged_loss is not None:
        loss += f", averaged {event.averaged_loss:.4f}{BEST if event.is_best and event.best_averaged else ''}"
    return f"step {event.step}: {loss}{when}"


def stopped_by(result: TrainResult) -> str:
    """Why a run ended: "--max-time (budget spent)", "signal (SIGINT)", ..."""
    reason = result.stopped_by  # a StopReason: TrainResult makes it one
    if reason.finished:
        return f"{option(reason.value)} (budget spent)"
    if reason is StopReason.SIGNAL:
        return f"signal ({signal.Signals(result.signal).name})" if result.signal else "signal"
    return "a NaN or infinite training loss" if reason is StopReason.NAN else reason.value


def resume_hint(result: TrainResult) -> str:
    """What a stopped run says before its summary: the command that continues it."""
    return f"stopped by signal; resume with:\n  {result.resume_command}"


def lineage(record: Lineage | None) -> str:
    """A fine-tuning run's bases, nearest first: "checkpoints/base/best.pt (sha256 86c4e6aa9db7,
    tinyshakespeare.txt, 2,400 steps), which started from ..."; empty for a run from scratch."""
    parts = []
    while record:
        corpus = Path(record.corpus).name if record.corpus else "corpus unknown"
        parts.append(f"{record.path} (sha256 {record.sha256[:12]}, {corpus}, {record.steps:,} steps)")
        record = record.base
    return ", which started from ".join(parts)


def base_name(record: Lineage | None) -> str:
    """A run's base as a short name: its run directory's, or its file's; "-" for none."""
    if record is None:
        return "-"
    path = Path(record.path)
    return path.parent.name if path.name in (BEST_FILE, LAST_FILE) else path.name
