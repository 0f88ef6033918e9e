"""A training run: what it works on in memory, how it starts afresh or resumes from ``last.pt``,
and the files of its run directory (checkpoints and ``metrics.jsonl``)."""

from __future__ import annotations

import contextlib
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from charlstm.config import DEFAULT_EPOCHS, ModelConfig, TrainConfig, training_configs
from charlstm.data.batches import StreamBatches, check_trainable, split_tokens
from charlstm.data.corpus import Reading, TokenizedCorpus, load_corpus
from charlstm.data.sources import CorpusSource, ProgressFn, resolve_corpus
from charlstm.device import keep_freed_memory, resolve_device
from charlstm.errors import UserError
from charlstm.files import atomic_write, remove_stale_temporaries
from charlstm.net.model import CharLSTM, State
from charlstm.store import configfile, metrics, tensorboard
from charlstm.store.checkpoint import BEST, LAST, Checkpoint, Lineage, RunState
from charlstm.store.configfile import CONFIG
from charlstm.store.metrics import METRICS
from charlstm.training import finetune
from charlstm.training.average import Averager
from charlstm.training.distributed import SINGLE, Processes, gather_objects, gather_rows, main_first, on_main
from charlstm.training.events import VocabMerge
from charlstm.training.sizing import sized_model
from charlstm.training.step import Learner, make_optimizer


@dataclass(frozen=True)
class RunData:
    """The text a run trains on: the corpus, this process's batches of it, the validation tail."""

    corpus: TokenizedCorpus
    batches: StreamBatches
    val_tokens: np.ndarray


@dataclass
class Run:
    """What a training session works on: the configs, the data, the learner, and where the run
    stands (saved in every checkpoint), with the state carried from chunk to chunk."""

    tcfg: TrainConfig
    mcfg: ModelConfig
    run_dir: Path
    data: RunData
    learner: Learner
    state: RunState
    procs: Processes = SINGLE
    hidden: State | None = None  # carried from chunk to chunk, each (layers, B, H) for this process's streams
    saved_world: int | None = None  # resumed from a run saved by this other number of processes
    averager: Averager | None = None  # the averaged weights, under --average
    event_log: tensorboard.EventLog | None = None  # this session's, under --tensorboard (the main process)
    logged: bool = False  # whether the session that saved the checkpoint wrote the TensorBoard log
    lineage: Lineage | None = None  # the base a fine-tuning run started from (finetune.py)
    merge: VocabMerge | None = None  # how that run's vocabulary came about (a new run only)

    @property
    def epoch_float(self) -> float:
        return self.state.passes

    def fraction(self) -> float:
        """Share of the budget spent: the largest over steps, epochs and time."""
        t = self.tcfg
        parts = [self.epoch_float / target_epochs(t)]
        if t.max_steps:
            parts.append(self.state.step / t.max_steps)
        if t.max_time:
            parts.append(self.state.elapsed / t.max_time)
        return min(1.0, max(parts))


def target_epochs(t: TrainConfig) -> float:
    """Passes over the training split the run may make: ``--epochs``; without it, no limit when
    ``--max-steps`` or ``--max-time`` is given, and 10 when no budget is."""
    return t.epochs if t.epochs is not None else (math.inf if t.has_budget else DEFAULT_EPOCHS)


def default_run_dir(source: CorpusSource) -> Path:
    """``checkpoints/NAME``: a known corpus's file stem (``tinyshakespeare``), a file's stem or a folder's name."""
    return Path("checkpoints") / source.name


def char_starts(corpus: TokenizedCorpus, device: torch.device) -> torch.Tensor | None:
    """Which ids begin a character (V,) on ``device``; None without byte tokens, where every id does."""
    vocab = corpus.vocab
    return torch.from_numpy(vocab.char_starts()).to(device) if vocab.byte_fallback else None


def check_run_dir(run_dir: Path, overwrite: bool) -> None:
    """Refuse, before any long work, a run directory that holds a run (unless ``overwrite``) or
    that cannot be made: its nearest existing ancestor must be a writable folder."""
    existing = [n for n in (BEST, LAST, METRICS) if (run_dir / n).exists()]
    if existing and not overwrite:
        raise UserError(
            f"run directory {str(run_dir)!r} already holds a run ({', '.join(existing)}); pass "
            f"--resume {run_dir} to continue it, --overwrite to start afresh, or --out DIR"
        )
    ancestor = next(p for p in (run_dir, *run_dir.absolute().parents) if p.exists())
    if not ancestor.is_dir() or not os.access(ancestor, os.W_OK):
        reason = "Not a directory" if not ancestor.is_dir() else "Permission denied"
        raise UserError(f"cannot write to run directory {str(run_dir)!r} ({reason}), expected a writable folder")


def make_run_dir(run_dir: Path) -> None:
    """Create the run directory afresh: earlier run files and stale temporaries removed."""
    for name in (BEST, LAST, METRICS, CONFIG):
        (run_dir / name).unlink(missing_ok=True)
    for events in run_dir.glob(tensorboard.EVENTS):  # an earlier run's TensorBoard log would show as this run's
        events.unlink()
    remove_stale_temporaries(run_dir)
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        probe = run_dir / ".write-test"
        probe.write_bytes(b"")
        probe.unlink()
    except OSError as e:
        raise UserError(
            f"cannot write to run directory {str(run_dir)!r} ({e.strerror}), expected a writable folder"
        ) from None


def new_run(
    tcfg: TrainConfig,
    mcfg: ModelConfig,
    overwrite: bool = False,
    progress: ProgressFn | None = None,
    procs: Processes = SINGLE,
    unset: frozenset[str] = frozenset(),
    keep_memory: bool = False,
    given: frozenset[str] = frozenset(),
) -> Run:
    """Build a fresh run: corpus, splits, model, optimizer, run directory (``keep_memory``: see
    :func:`training_device`); with ``--init-from``, from a base (``finetune.py``; ``given``: the
    options the user set, which the base's shape must agree with). The options in
    ``unset`` (left to charlstm) take the values of the preset the budget calls for
    (``presets.py``; under ``auto`` with ``--max-steps``, the chunk and cadence stay as they
    are). The directory is checked before the corpus is read (which can take a while) and
    cleared only after. With
    several processes, the main one checks and clears it and each machine's first fills the
    token cache before the others read it."""
    if tcfg.tensorboard:
        tensorboard.require()
    source = main_first(procs, lambda: resolve_corpus(tcfg.corpus, progress=progress), local=True)
    run_dir = Path(tcfg.out) if tcfg.out else default_run_dir(source)
    base = on_main(procs, lambda: finetune.read_base(tcfg.init_from, run_dir)) if tcfg.init_from else None
    on_main(procs, lambda: check_run_dir(run_dir, overwrite))  # after: a base's own directory is said as such
    fixed: tuple[dict[str, Any], dict[str, Any]] = ({}, {})
    if base is not None:
        begun = finetune.start(tcfg, mcfg, given, unset, base)
        tcfg, mcfg, unset, fixed = begun.tcfg, begun.mcfg, begun.unset, (begun.from_base, begun.fine_tuned)
    corpus, merge = main_first(procs, lambda: _corpus(source, tcfg, base, progress), local=True)
    train_tokens, val_tokens = split_tokens(corpus.tokens, tcfg.val_fraction)
    tcfg, mcfg = training_configs({"vocab_size": len(corpus.vocab), "out": str(run_dir)}, (tcfg, mcfg))
    device = training_device(tcfg, procs, keep_memory)

    def batches_for(cfg: TrainConfig) -> StreamBatches:
        check_trainable(train_tokens, val_tokens, cfg.batch_size, cfg.seq_len)
        return rank_batches(train_tokens, cfg, procs)

    read = None  # on a text far from the base's, some options as from scratch (finetune.py)
    if base is not None:
        read = on_main(procs, lambda: finetune.familiarity(base.checkpoint, corpus.vocab, train_tokens))
        begun = finetune.release(tcfg, mcfg, begun, read)
        tcfg, mcfg, unset, fixed = begun.tcfg, begun.mcfg, begun.unset, (begun.from_base, begun.fine_tuned)
    sized = sized_model(tcfg, mcfg, unset, batches_for, device, procs, fixed)
    tcfg, mcfg, batches, model, sizing = sized.tcfg, sized.mcfg, sized.batches, sized.model, sized.sizing
    if base is not None and read is not None:
        tcfg, mcfg, moved = finetune.fit(tcfg, mcfg, begun.released, read)
        applied = {k: v for k, v in sizing.applied.items() if k not in moved}
        reading = {"base_loss": read.loss, "guess_loss": read.guess, "far": read.far}
        sizing = replace(sizing, applied=applied, by_reading=moved, **reading)
        if mcfg != sized.mcfg:  # its weight drop moved: built again, seeded as sizing builds
            torch.manual_seed(tcfg.seed)
            model = CharLSTM(mcfg).to(device).train()
        finetune.load_base(model, base.checkpoint, corpus.vocab)
    on_main(procs, lambda: make_run_dir(run_dir))
    if procs.many:
        torch.manual_seed(tcfg.seed + procs.rank)  # after the shared initial weights: dropout masks of its own
    optimizer = make_optimizer(model, tcfg.lr, tcfg.weight_decay, device)
    learner = Learner.of(model, optimizer, sized.precision, tcfg.grad_clip, char_starts(corpus, device), procs)
    state = RunState(chunks_per_epoch=len(batches), precision=sized.precision, sizing=sizing.to_dict())
    run = Run(tcfg, mcfg, run_dir, RunData(corpus, batches, val_tokens), learner, state, procs)
    run.averager = Averager(model) if tcfg.average else None
    run.lineage, run.merge = (base.lineage, merge) if base is not None else (None, None)
    on_main(procs, lambda: write_config(run))
    return run


def _corpus(
    source: CorpusSource, tcfg: TrainConfig, base: finetune.Base | None, progress: ProgressFn | None
) -> tuple[TokenizedCorpus, VocabMerge | None]:
    """A new run's corpus: in its own vocabulary, or in its base's grown by it."""
    if base is None:
        return load_corpus(source, Reading.of(tcfg), progress), None
    return finetune.corpus_for(base, source, Reading.of(tcfg), progress)


def training_device(tcfg: TrainConfig, procs: Processes, keep_memory: bool = False) -> torch.device:
    """The device this process trains on; on CPU with ``keep_memory`` (a process that is there to
    train, such as ``charlstm train``'s), with freed memory kept for the next step for the rest of
    the process (``device.keep_freed_memory``; the corpus, read before, keeps its own mappings)."""
    device = resolve_device(tcfg.device, procs.local_rank)
    if device.type == "cpu" and keep_memory:
        keep_freed_memory()
    return device


def rank_batches(tokens: np.ndarray, tcfg: TrainConfig, procs: Processes) -> StreamBatches:
    """This process's contiguous share of the ``--batch-size`` streams (all of them for one process)."""
    whole = StreamBatches(tokens, tcfg.batch_size, tcfg.seq_len)
    rows = procs.shard(tcfg.batch_size)
    if not procs.many:
        return whole
    starts = whole.starts[rows, 0]
    return StreamBatches(tokens, len(starts), tcfg.seq_len, starts=starts, stream_len=whole.stream_len)


def to_checkpoint(run: Run) -> Checkpoint:
    """The run as a checkpoint: tensors on the CPU, everything needed to sample, evaluate and resume.
    With several processes every one must call it: the carried states and random states of all
    are gathered (the checkpoint then looks like a single process's, with a random state per rank)."""
    procs, corpus, learner = run.procs, run.data.corpus, run.learner
    rng: dict[str, Any] = {"torch": torch.get_rng_state()}
    if learner.device.type == "cuda":
        rng["cuda"] = torch.cuda.get_rng_state(learner.device)
    if procs.many:  # every process's state, in rank order; "torch" stays the main one's
        rng["ranks"] = gather_objects(procs, rng["torch"])
        if "cuda" in rng:
            rng["cuda_ranks"] = gather_objects(procs, rng["cuda"])
    hidden = None if run.hidden is None else tuple(gather_rows(procs, t.detach(), 1).cpu() for t in run.hidden)
    return Checkpoint(
        model_config=run.mcfg,
        vocab=corpus.vocab,
        model={k: v.detach().cpu() for k, v in learner.model.state_dict().items()},
        train_config=run.tcfg,
        progress=run.state,
        optimizer=_on_cpu(learner.optimizer.state_dict()),
        rng=rng,
        hidden=hidden,
        corpus=corpus.record(),
        averaged=run.averager.state_dict() if run.averager is not None else None,
        lineage=run.lineage,
    )


def _on_cpu(obj: Any) -> Any:
    if isinstance(obj, torch.Tensor):
        return obj.detach().cpu()
    if isinstance(obj, dict):
        return {k: _on_cpu(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_on_cpu(v) for v in obj]
    return obj


@contextlib.contextmanager
def _writing(run: Run, name: str) -> Iterator[None]:
    """Turn a failed write (disk full, folder gone) into one clear error; the old file stays."""
    try:
        yield
    except OSError as e:
        raise UserError(
            f"could not write {run.run_dir / name} ({e.strerror or e}) at step {run.state.step}; the previous "
            f"{name} is intact, free some space or pass --out to another folder, then --resume"
        ) from None


def save(run: Run, names: tuple[str, ...]) -> None:
    """Write the run's checkpoint under each of ``names`` in its run directory (the main process);
    ``best.pt``'s model and state are the averaged weights' when they evaluated best."""
    checkpoint = to_checkpoint(run)
    averager = run.averager if run.state.best_averaged else None
    # the averaged weights sample from their own state (average.py), never from the one training carried
    best = replace(checkpoint, model=checkpoint.averaged, hidden=averager.warm) if averager else checkpoint

    def write() -> None:
        if run.event_log is not None:  # first: the log holds every step the checkpoint does
            run.event_log.flush()
        for name in names:
            with _writing(run, name):
                (best if name == BEST else checkpoint).save(run.run_dir / name)

    on_main(run.procs, write)


def log_metric(run: Run, record: dict[str, Any]) -> None:
    """Append one line to metrics.jsonl (the main process), and count it in the run state."""
    run.state.metrics_lines += 1
    if run.procs.main:
        with _writing(run, METRICS):
            metrics.append(run.run_dir, record)
        if run.event_log is not None:
            run.event_log.record(record)


def open_event_log(run: Run) -> None:
    """Start this session's TensorBoard log under --tensorboard (the main process): a resumed
    run's from the step after its checkpoint, as metrics.jsonl is; where the session before did
    not log (a resume that turns it on), from the run's metrics so far."""
    if run.tcfg.tensorboard and run.procs.main:
        earlier = metrics.read(run.run_dir) if run.state.step else ()
        run.event_log = tensorboard.EventLog(run.run_dir, run.state.step, earlier, kept=run.logged)


def rewrite_metrics(run: Run) -> int:
    """metrics.jsonl as of the checkpoint: its first ``metrics_lines`` records; the lines written
    after the checkpoint was saved are dropped, except the end record of a session that stopped
    right at it (which stays, so that a resume refused leaves the run as it ended)."""
    records = metrics.read(run.run_dir) if (run.run_dir / METRICS).is_file() else []
    kept, after = records[: run.state.metrics_lines], records[run.state.metrics_lines :]
    end = metrics.ending(after[:1])
    if end is not None and end.get("step") == run.state.step:
        kept.append(end)
    with _writing(run, METRICS):
        atomic_write(run.run_dir / METRICS, metrics.lines_of(kept), mode="w")
    return len(kept)


def write_config(run: Run) -> None:
    """The run's settings as ``config.toml``, its precision as measured: a file that repeats the run."""
    with _writing(run, CONFIG):
        configfile.write(run.run_dir, run.tcfg, run.mcfg, run.state.precision)
