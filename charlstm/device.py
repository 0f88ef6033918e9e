"""Where and in which precision a model runs: the torch device, bf16 support, autocast, and the
C library's handling of freed memory. (The measured choices, speed and precision, are
``training/probe.py``.)"""

from __future__ import annotations

import contextlib
import ctypes

import torch

from charlstm.errors import UserError

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
    step, a third of its time on CPU (``docs/sweep.md``, memory). With mmap off and the heap
    kept, the next step reuses the same pages. The process keeps its peak memory, and glibc's
    self-adjusting mmap threshold is off for good (glibc can neither report nor restore it), so
    only a process that is there to train asks for this: ``charlstm train`` does, a library caller
    only with ``keep_freed_memory=True``. Returns whether the C library took the settings (glibc
    only: elsewhere this does nothing)."""
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
