"""Measured choices for a new run: the speed of a training step on this machine (which sizing
reads for a time budget) and, under ``--precision auto``, fp32 against bf16 autocast."""

from __future__ import annotations

import contextlib
import copy
import math
import statistics
import time
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from charlstm.data.batches import StreamBatches
from charlstm.device import autocast, bf16_supported, synchronize
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM, State
from charlstm.training.step import Learner, make_optimizer, train_step

PROBE_STEPS = 32  # characters per stream in the precision probe: enough to time, quick to run
BF16_MARGIN = 0.9  # bf16 must be at least 10% faster to be chosen: it rounds, so it must pay
# The speed probe: whole training steps (forward, backward, clipping, AdamW) on the run's own
# chunks, from a carried state, after steps that warm the kernels and the memory up; then a few
# timed passes, of which the median counts. The first two steps of a fresh model run 1.3-2x
# slower than the steady state on CPU (oneDNN sets its kernels up, the heap grows to a step's size).
WARMUP_STEPS = 2
TIMED_PASSES = 3
PASS_SECONDS = 0.3  # a timed pass takes at least about this long ...
MAX_PASS_STEPS = 8  # ... and at most this many steps


@dataclass(frozen=True)
class SpeedReading:
    """What the speed probe measured: characters per second of a training step (the median pass),
    each timed pass's figure, and the steps each took."""

    chars_per_s: float
    passes: tuple[float, ...]
    steps_per_pass: int


def _forked_rng(device: torch.device) -> contextlib.AbstractContextManager:
    """A scope whose random draws (dropout in a probe) leave the run's generators where they were."""
    return torch.random.fork_rng(devices=[device] if device.type == "cuda" else [])


def _time_steps(model: CharLSTM, x: torch.Tensor, y: torch.Tensor, device: torch.device, precision: str) -> float:
    """Best seconds of a forward + backward pass at ``precision`` over two timed runs (after a warm-up)."""
    times = []
    for _ in range(3):
        synchronize(device)
        t0 = time.perf_counter()
        with autocast(device, precision):
            logits, _ = model(x)
            loss = F.cross_entropy(logits.flatten(0, 1).float(), y.flatten())
        loss.backward()
        synchronize(device)
        times.append(time.perf_counter() - t0)
    return min(times[1:])


def training_speed(
    model: CharLSTM, batches: StreamBatches, device: torch.device, precision: str, grad_clip: float = 1.0
) -> SpeedReading:
    """Characters per second training ``model`` on ``batches`` runs at, as the training log will
    read it: whole steps, timed in the steady state, on a copy of the model with an optimizer of its
    own (the model and the run's random generators are left as they were)."""
    probe = copy.deepcopy(model).train()
    learner = Learner.of(probe, make_optimizer(probe, 1e-3, 0.0, device), precision, grad_clip)
    chars = batches.streams * batches.seq_len
    state: State | None = None
    chunk = 0

    def steps(n: int) -> float:
        nonlocal state, chunk
        synchronize(device)
        t0 = time.perf_counter()
        for _ in range(n):
            x, y = (t.to(device) for t in batches.batch(chunk % len(batches)))
            _, state = train_step(learner, x, y, state, 1e-3)
            chunk += 1
        synchronize(device)
        return time.perf_counter() - t0

    with _forked_rng(device):
        warm = steps(WARMUP_STEPS) / WARMUP_STEPS
        n = max(1, min(MAX_PASS_STEPS, math.ceil(PASS_SECONDS / max(warm, 1e-9))))
        passes = tuple(n * chars / steps(n) for _ in range(TIMED_PASSES))
    return SpeedReading(statistics.median(passes), passes, n)


def choose_precision(name: str, model: CharLSTM, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device) -> str:
    """``auto`` measures fp32 against bf16 autocast on this model and batch and keeps the faster."""
    if name != "auto":
        if name == "bf16" and not bf16_supported(device):
            raise UserError(f"--precision bf16 is not supported on {device.type} here, expected fp32 or auto")
        return name
    if not bf16_supported(device):
        return "fp32"
    probe = copy.deepcopy(model).train()
    x, y = (t[:, : min(PROBE_STEPS, t.shape[1])].to(device) for t in batch)
    with _forked_rng(device):
        fp32 = _time_steps(probe, x, y, device, "fp32")
        bf16 = _time_steps(probe, x, y, device, "bf16")
    return "bf16" if bf16 < fp32 * BF16_MARGIN else "fp32"
