"""Where and in which precision a model runs: the torch device, bf16 support, autocast, and the
C library's handling of freed memory. (The measured choices, speed and precision, are
``training/probe.py``.)"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Callable, Iterator

import torch

from charlstm.errors import UserError

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_MMAP_MAX = -1, -3, -4  # glibc's mallopt parameters (malloc.h)
KEPT_TOP = 2**30  # bytes of free memory at the top of the heap before glibc hands any back
# glibc's own defaults (malloc/malloc.c): 128 KiB thresholds and up to 65,536 mapped blocks.
DEFAULT_TRIM_THRESHOLD, DEFAULT_MMAP_THRESHOLD, DEFAULT_MMAP_MAX = 128 * 1024, 128 * 1024, 65536


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


class _Allocator:
    """glibc's malloc settings that training changes, which belong to the whole process: whether
    charlstm changed them, so that :func:`allocator_as_found` can put them back."""

    changed = False


def _mallopt() -> Callable[[int, int], int] | None:
    try:
        return ctypes.CDLL(None).mallopt
    except (OSError, AttributeError, TypeError):  # not glibc (musl, macOS, Windows)
        return None


def keep_freed_memory() -> bool:
    """Have glibc's malloc keep the memory a training step frees for the steps after it. By default
    each of the step's large buffers (a 64 x 128 chunk of the small preset's gates is 33-67 MB) is
    mapped afresh, faulted in page by page and handed back at its end: some 35,000 page faults a
    step, a third of its time on CPU (``docs/sweep.md``, memory). With mmap off and the heap
    kept, the next step reuses the same pages. The process keeps its peak memory until
    :func:`allocator_as_found` ends; returns whether the C library took the settings (glibc only:
    elsewhere this does nothing)."""
    mallopt = _mallopt()
    if mallopt is None:
        return False
    _Allocator.changed = True
    return bool(mallopt(M_MMAP_MAX, 0)) and bool(mallopt(M_TRIM_THRESHOLD, KEPT_TOP))


def glibc_setting(name: str, tunable: str, default: int) -> int:
    """What glibc started this process with for one malloc setting: the ``MALLOC_<NAME>_``
    variable, the ``glibc.malloc.<tunable>`` entry of ``GLIBC_TUNABLES`` (which wins), or its default."""
    value = os.environ.get(f"MALLOC_{name}_", "")
    for entry in os.environ.get("GLIBC_TUNABLES", "").split(":"):
        key, _, given = entry.partition("=")
        if key == f"glibc.malloc.{tunable}":
            value = given
    try:
        return int(value, 0) if value else default
    except ValueError:
        return default


@contextlib.contextmanager
def allocator_as_found() -> Iterator[None]:
    """Put glibc's malloc settings back at the end of the block if :func:`keep_freed_memory` changed
    them in it, so that a long-lived process (a notebook) that trains once does not keep the
    changed allocator, nor the peak of the heap, for the rest of its life.

    glibc has no call that reads a setting, so the values restored are those it started with
    (:func:`glibc_setting`). Its dynamic mmap threshold, which grows with the blocks a program
    frees, stays off once any of these is set: the thresholds are then glibc's static defaults,
    as in a process started with ``MALLOC_TRIM_THRESHOLD_=131072``."""
    was = _Allocator.changed
    _Allocator.changed = False
    try:
        yield
    finally:
        mallopt = _mallopt()
        if _Allocator.changed and mallopt is not None:
            mallopt(M_MMAP_MAX, glibc_setting("MMAP_MAX", "mmap_max", DEFAULT_MMAP_MAX))
            mallopt(M_MMAP_THRESHOLD, glibc_setting("MMAP_THRESHOLD", "mmap_threshold", DEFAULT_MMAP_THRESHOLD))
            mallopt(M_TRIM_THRESHOLD, glibc_setting("TRIM_THRESHOLD", "trim_threshold", DEFAULT_TRIM_THRESHOLD))
            ctypes.CDLL(None).malloc_trim(0)  # and hand back the heap's free top, as glibc would have
        _Allocator.changed = was


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
