"""Where and in which precision a model runs: the torch device, bf16 support, autocast, and the
measured choice between fp32 and bf16."""

from __future__ import annotations

import contextlib
import copy
import ctypes
import time

import torch
import torch.nn.functional as F

from charlstm.errors import UserError
from charlstm.net.model import CharLSTM

PROBE_STEPS = 32  # characters per stream in the precision probe: enough to time, quick to run
# A forward and backward pass is this share of a training step's time: the rest is the optimizer,
# clipping, batches and evaluations (measured in benchmarks/SWEEP.md round 7).
STEP_SHARE = 0.8
BF16_MARGIN = 0.9  # bf16 must be at least 10% faster to be chosen: it rounds, so it must pay
M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc's mallopt parameters (malloc.h)
KEPT_TOP = 2**30  # bytes of free memory at the top of the heap before glibc hands any back


def mps_available() -> bool:
    return bool(getattr(torch.backends, "mps", None) and torch.backends.mps.is_available())


def resolve_device(name: str, local_rank: int = 0) -> torch.device:
    """The torch device for ``--device``; refuses a device this machine does not have. Each process
    on a machine with several GPUs takes the one of its local rank."""
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda", local_rank)
        return torch.device("mps" if mps_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for but no CUDA GPU is available, expected --device cpu or auto")
    if name == "mps" and not mps_available():
        raise UserError("--device mps was asked for but MPS is not available, expected --device cpu or auto")
    return torch.device("cuda", local_rank) if name == "cuda" else torch.device(name)


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees for the steps after it. By default
    each of the step's large buffers (a 64 x 128 chunk of the small preset's gates is 33-67 MB) is
    mapped afresh, faulted in page by page and handed back at its end: some 35,000 page faults a
    step, a third of its time on CPU (``benchmarks/SWEEP.md`` round 10). With mmap off and the heap
    kept, the next step reuses the same pages. The process keeps its peak memory; returns whether
    the C library took the settings (glibc only: elsewhere this does nothing)."""
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):
        return False
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_TOP))


def bf16_supported(device: torch.device) -> bool:
    if device.type == "cuda":
        return torch.cuda.is_bf16_supported()
    if device.type == "cpu":
        return bool(torch.backends.mkldnn.is_available() and torch.ops.mkldnn._is_mkldnn_bf16_supported())
    return False


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16 autocast for ``precision="bf16"``; nothing for fp32."""
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def synchronize(device: torch.device) -> None:
    """Wait for queued GPU work, so that a clock reading means something."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    elif device.type == "mps":
        torch.mps.synchronize()


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
