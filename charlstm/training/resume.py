"""Resuming a run from its ``last.pt``: the run rebuilt exactly as it was saved, with only the
budget and logging options allowed to change, its corpus checked to be the same text."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

from charlstm.config import TrainConfig, train_options
from charlstm.data.batches import split_tokens
from charlstm.data.corpus import Reading, TokenizedCorpus, load_in_vocab
from charlstm.data.sources import ProgressFn, resolve_corpus
from charlstm.errors import UserError
from charlstm.files import remove_stale_temporaries
from charlstm.net.model import CharLSTM
from charlstm.options import option
from charlstm.store import tensorboard
from charlstm.store.checkpoint import LAST, Checkpoint, load_checkpoint
from charlstm.training.average import Averager
from charlstm.training.distributed import SINGLE, Processes, main_first, on_main
from charlstm.training.run import (
    Run,
    RunData,
    char_starts,
    rank_batches,
    rewrite_metrics,
    training_device,
    write_config,
)
from charlstm.training.step import Learner, make_optimizer

# Options that may change when a run is resumed; any other differing value is refused.
RESUMABLE_CHANGES = frozenset(d.name for d in train_options() if d.option.resumable)
MAY_CHANGE = ", ".join(d.flag for d in train_options() if d.option.resumable)  # in the order of --help


def resume_run(
    path: str | Path,
    options: dict[str, Any],
    progress: ProgressFn | None = None,
    procs: Processes = SINGLE,
    keep_memory: bool = False,
) -> Run:
    """Rebuild a run from its ``last.pt`` exactly as it was saved; ``options`` are those the user
    gave again, of which only the budget and logging ones may differ from the run's. With several
    processes, the main one reads the checkpoint and gives it to the others."""
    if options.get("init_from") is not None:  # before anything is read: the run stays as it is
        raise UserError(
            "--init-from cannot be used with --resume: --resume continues a run, --init-from starts a new one "
            "from a base; drop one of them"
        )
    ckpt = on_main(procs, lambda: _resumable(load_checkpoint(path, prefer=LAST)))
    run_dir = ckpt.path.parent
    tcfg = _resumed_config(ckpt, options, run_dir)
    if tcfg.tensorboard:  # every process: they stop together
        tensorboard.require()
    corpus = main_first(procs, lambda: _same_corpus(tcfg, ckpt, progress), local=True)
    train_tokens, val_tokens = split_tokens(corpus.tokens, tcfg.val_fraction)
    batches = rank_batches(train_tokens, tcfg, procs)
    device = training_device(tcfg, procs, keep_memory)
    model = CharLSTM(ckpt.model_config).to(device).train()
    model.load_state_dict(ckpt.model)
    optimizer = make_optimizer(model, tcfg.lr, tcfg.weight_decay, device)
    optimizer.load_state_dict(ckpt.optimizer)
    rows, hidden = procs.shard(tcfg.batch_size), ckpt.hidden  # saved for every stream: this process takes its share
    hidden = None if hidden is None else tuple(t[:, rows].to(device) for t in hidden)
    state = ckpt.progress
    state.chunks_per_epoch = len(batches)  # the same text and chunk: what a migrated checkpoint may not know
    learner = Learner.of(model, optimizer, state.precision, tcfg.grad_clip, char_starts(corpus, device), procs)
    run = Run(tcfg, ckpt.model_config, run_dir, RunData(corpus, batches, val_tokens), learner, state, procs, hidden)
    run.averager = Averager(model, ckpt.averaged) if tcfg.average else None
    run.logged, run.lineage = ckpt.train_config.tensorboard, ckpt.lineage
    run.saved_world = restore_rng(ckpt.rng, device, procs, tcfg.seed + run.state.step)
    on_main(procs, lambda: (remove_stale_temporaries(run_dir), write_config(run)))
    run.state.metrics_lines = on_main(procs, lambda: rewrite_metrics(run))  # every process counts the same lines
    return run


def _resumable(ckpt: Checkpoint) -> Checkpoint:
    if not ckpt.resumable:
        raise UserError(
            f"{str(ckpt.path)!r} cannot be resumed (only a run's {LAST} holds the optimizer, RNG and data "
            f"position), expected the run directory or its {LAST}"
        )
    return ckpt


def _resumed_config(ckpt: Checkpoint, options: dict[str, Any], run_dir: Path) -> TrainConfig:
    """The run's own training config with the allowed changes applied; any other change is refused."""
    stored = {**ckpt.train_config.to_dict(), **ckpt.model_config.to_dict()}
    for key, value in options.items():
        if key not in RESUMABLE_CHANGES and key in stored and stored[key] != value:
            raise UserError(
                f"{option(key)} {value!r} differs from the run's {stored[key]!r}; a resumed run keeps its "
                f"architecture, data and optimiser settings (only {MAY_CHANGE} may change), so drop the "
                f"option or start a new run with --out"
            )
    changes = {k: v for k, v in options.items() if k in RESUMABLE_CHANGES}
    return TrainConfig.from_dict({**ckpt.train_config.to_dict(), **changes, "out": str(run_dir)})


def _same_corpus(tcfg: TrainConfig, ckpt: Checkpoint, progress: ProgressFn | None) -> TokenizedCorpus:
    """The run's corpus in the run's own vocabulary, refusing a text that changed since the run started."""
    source = resolve_corpus(tcfg.corpus, progress=progress)
    expected = (ckpt.corpus or {}).get("sha256")
    if not expected:
        raise UserError(
            f"{str(ckpt.path)!r} records no corpus hash, so resuming cannot check the text; start a new run"
        )
    source.check_unchanged(expected, "the run started", "resume needs the same text")
    return load_in_vocab(source, Reading.of(tcfg), ckpt.vocab, progress)


def restore_rng(rng: dict[str, Any], device: torch.device, procs: Processes, fresh_seed: int) -> int | None:
    """Each process's random state as saved. A run saved by another number of processes keeps
    its data position, but its random streams cannot be shared out again: each process starts a
    new one (from ``fresh_seed`` and its rank), and the number of processes that saved it is
    returned (None when it is this one's)."""
    states = rng.get("ranks", [rng["torch"]])
    if len(states) != procs.world:
        torch.manual_seed(fresh_seed * 1000 + procs.rank)
        return len(states)
    torch.set_rng_state(states[procs.rank])
    cuda = rng.get("cuda_ranks", [rng["cuda"]] if "cuda" in rng else [])
    if device.type == "cuda" and len(cuda) == procs.world:
        torch.cuda.set_rng_state(cuda[procs.rank], device)
    return None
