"""Sizing a new run: its model built from the configs, this machine's speed measured when a time
budget needs it, and the model built again when the preset the budget calls for changes it
(the rule itself is ``presets.py``)."""

from __future__ import annotations

import torch

from charlstm.config import ModelConfig, TrainConfig
from charlstm.corpus import StreamBatches
from charlstm.device import choose_precision, training_speed
from charlstm.distributed import Processes, on_main
from charlstm.model import CharLSTM
from charlstm.presets import Sizing, apply, choose, needs_speed


def sized_model(
    tcfg: TrainConfig,
    mcfg: ModelConfig,
    unset: frozenset[str],
    batches: StreamBatches,
    device: torch.device,
    procs: Processes,
) -> tuple[TrainConfig, ModelConfig, CharLSTM, str, Sizing]:
    """A new run's configs, model, precision and sizing: the model is built from the configs,
    timed when the choice needs this machine's speed, and built again if the preset changes it.
    The seed is set before each build, so the weights depend only on the final configs."""
    model, precision = _seeded_model(tcfg, mcfg, batches, device, procs)
    speed = None
    if needs_speed(tcfg, unset):
        # every process trains its share of the streams at once: the whole run goes about world times as fast
        speed = procs.world * on_main(procs, lambda: training_speed(model, batches.batch(0), device, precision))
    sizing = choose(tcfg, unset, len(batches.tokens), speed)
    sized_t, sized_m = apply(sizing, tcfg, mcfg)
    if sized_m != mcfg:
        model, precision = _seeded_model(sized_t, sized_m, batches, device, procs)
    return sized_t, sized_m, model, precision, sizing


def _seeded_model(
    tcfg: TrainConfig, mcfg: ModelConfig, batches: StreamBatches, device: torch.device, procs: Processes
) -> tuple[CharLSTM, str]:
    torch.manual_seed(tcfg.seed)
    model = CharLSTM(mcfg).to(device).train()
    return model, on_main(procs, lambda: choose_precision(tcfg.precision, model, batches.batch(0), device))
