"""Sizing a new run: its model built from the configs, this machine's speed measured when a time
budget needs it, and the model and batches built again when the preset the budget calls for
changes them (the rule itself is ``presets.py``)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch

from charlstm.config import ModelConfig, TrainConfig
from charlstm.data.batches import StreamBatches
from charlstm.net.model import CharLSTM
from charlstm.training.distributed import Processes, max_all, on_main
from charlstm.training.presets import Sizing, apply, choose, needs_speed
from charlstm.training.probe import SpeedReading, choose_precision, training_speed


@dataclass(frozen=True)
class SizedRun:
    """What sizing settled for a new run."""

    tcfg: TrainConfig
    mcfg: ModelConfig
    batches: StreamBatches  # this process's share of the streams, on the sized chunk
    model: CharLSTM
    precision: str
    sizing: Sizing


def sized_model(
    tcfg: TrainConfig,
    mcfg: ModelConfig,
    unset: frozenset[str],
    batches_for: Callable[[TrainConfig], StreamBatches],
    device: torch.device,
    procs: Processes,
    fixed: tuple[dict[str, Any], dict[str, Any]] = ({}, {}),
) -> SizedRun:
    """A new run's configs, batches, model, precision and sizing. Under a time budget the model of
    the given configs is built and timed first, and built again only if the preset changes it or
    the chunk it trains on (the precision is chosen on that chunk). The seed is set before each
    build, so the weights depend only on the final configs. ``fixed``: see ``presets.choose``."""
    batches = batches_for(tcfg)
    built, speed = None, None
    if needs_speed(tcfg, unset):
        built = _seeded_model(tcfg, mcfg, batches, device, procs)
        speed = _run_speed(*built, batches, device, procs, tcfg.grad_clip)
    sizing = choose(tcfg, unset, len(batches.tokens), speed and speed.chars_per_s, procs.world, fixed)
    if speed is not None and sizing.chars_per_s is not None:
        sizing = replace(sizing, speed_passes=[round(p, 1) for p in speed.passes])
    sized_t, sized_m = apply(sizing, tcfg, mcfg)
    rechunked = (sized_t.batch_size, sized_t.seq_len) != (tcfg.batch_size, tcfg.seq_len)
    if rechunked:
        batches = batches_for(sized_t)
    if built is None or sized_m != mcfg or rechunked:
        built = _seeded_model(sized_t, sized_m, batches, device, procs)
    return SizedRun(sized_t, sized_m, batches, *built, sizing)


def _seeded_model(
    tcfg: TrainConfig, mcfg: ModelConfig, batches: StreamBatches, device: torch.device, procs: Processes
) -> tuple[CharLSTM, str]:
    torch.manual_seed(tcfg.seed)
    model = CharLSTM(mcfg).to(device).train()
    return model, on_main(procs, lambda: choose_precision(tcfg.precision, model, batches.batch(0), device))


def _run_speed(
    model: CharLSTM, precision: str, batches: StreamBatches, device: torch.device, procs: Processes, grad_clip: float
) -> SpeedReading:
    """The speed of the whole run: every process times its share of the streams at once (so
    processes that share cores slow each other, as they will in training), and a step goes at the
    pace of the slowest, whose passes are kept."""
    reading = training_speed(model, batches, device, precision, grad_clip)
    slowest = max_all(procs, [1 / reading.chars_per_s])[0]
    scale = procs.world / slowest / reading.chars_per_s
    return SpeedReading(reading.chars_per_s * scale, tuple(p * scale for p in reading.passes), reading.steps_per_pass)
