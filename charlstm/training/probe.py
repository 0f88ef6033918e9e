"""Measured choices for a new run: the speed of a training step on this machine (which sizing
reads for a time budget) and, under ``--precision auto``, fp32 against bf16 autocast."""

from __future__ import annotations

import contextlib
import copy
import time

import torch
import torch.nn.functional as F

from charlstm.device import autocast, bf16_supported, synchronize
from charlstm.errors import UserError
from charlstm.net.model import CharLSTM

PROBE_STEPS = 32  # characters per stream in the precision probe: enough to time, quick to run
# A forward and backward pass is this share of a training step's time: the rest is the optimizer,
# clipping, batches and evaluations (measured: docs/sweep.md, the presets).
STEP_SHARE = 0.8
BF16_MARGIN = 0.9  # bf16 must be at least 10% faster to be chosen: it rounds, so it must pay


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
    model: CharLSTM, batch: tuple[torch.Tensor, torch.Tensor], device: torch.device, precision: str
) -> float:
    """Characters per second a training step of ``model`` would take on ``batch`` (a whole chunk):
    a measured forward and backward pass, less the share of time the rest of a step takes."""
    probe = copy.deepcopy(model).train()
    x, y = (t.to(device) for t in batch)
    with _forked_rng(device):
        seconds = _time_steps(probe, x, y, device, precision)
    return x.numel() / seconds * STEP_SHARE


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
