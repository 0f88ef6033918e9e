"""Independent jobs of torch work side by side in threads, one core each (torch's kernels let go of
Python's lock), with one count of their progress: dynamic evaluation's streams and grid points.

While the jobs run, torch's kernels use one thread each, so that as many jobs as torch had
threads share the cores without oversubscribing them; the count is restored afterwards. A job
that fails, or a wait interrupted by Ctrl-C, stops the others at their next count (``Tally``).
One parallel section runs at a time in a process, so that two callers cannot interleave their
changes to torch's thread count.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait
from contextlib import contextmanager
from typing import Any

import torch

_SECTION = threading.Lock()  # one parallel section at a time: torch's thread count is the process's


class Stopped(Exception):
    """A job given up because another failed or the wait was interrupted."""


class Tally:
    """Units of work done so far by every job, reported as one (done, total), in order, from
    whichever thread did them; once ``stop`` is set, the next count raises ``Stopped``."""

    def __init__(self, total: int = 0, on_progress: Callable[[int, int], None] | None = None):
        self.total, self.done, self.on_progress = total, 0, on_progress
        self.stop, self._lock = threading.Event(), threading.Lock()

    def add(self, units: int) -> None:
        if self.stop.is_set():
            raise Stopped
        with self._lock:
            self.done += units
            if self.on_progress is not None:
                self.on_progress(self.done, self.total)


def workers() -> int:
    """Jobs run at once: one per thread torch uses."""
    return max(1, torch.get_num_threads())


@contextmanager
def _one_core_each() -> Iterator[None]:
    """torch's kernels on one thread each while the jobs' threads run, as before afterwards."""
    with _SECTION:
        threads = torch.get_num_threads()
        torch.set_num_threads(1)
        try:
            yield
        finally:
            torch.set_num_threads(threads)


def in_parallel(jobs: list[Callable[[], Any]], at_once: int, tally: Tally | None = None) -> list[Any]:
    """Each job's result, in order; up to ``at_once`` of them at a time, in threads. When any of
    them fails, or the wait is interrupted, the rest are cancelled or stop at their next count in
    ``tally``, and the error is raised."""
    if at_once <= 1 or len(jobs) <= 1:
        return [job() for job in jobs]
    with _one_core_each(), ThreadPoolExecutor(min(at_once, len(jobs))) as pool:
        futures = [pool.submit(job) for job in jobs]
        try:
            wait(futures, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and f.exception() is not None), None)
            if failed is not None:
                raise failed.exception()  # type: ignore[misc]
            return [future.result() for future in futures]
        except BaseException:
            for future in futures:
                future.cancel()
            if tally is not None:
                tally.stop.set()
            raise
