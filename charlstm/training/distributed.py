"""Several processes training one model (``torchrun``): who this process is, the process group,
and the few collective steps the loop needs. With one process every function here is a no-op
that returns its input, so the rest of the code reads the same either way.

torchrun sets ``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK`` and ``LOCAL_WORLD_SIZE``; the backend is
NCCL for tensors on GPUs and gloo for those on the CPU: the loop's small agreements (stop
requests, sums) always travel through gloo, so they never wait for a GPU.
"""

from __future__ import annotations

import datetime
import gc
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

import torch
import torch.distributed as dist

from charlstm.errors import UserError

T = TypeVar("T")
# How long a process waits for the others: the first of a machine may read a corpus of hundreds
# of GB (at about 100 MB/s here) while the others wait to read its token cache.
TIMEOUT = datetime.timedelta(hours=2)


@dataclass(frozen=True)
class Processes:
    """This process's place among those training one model."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    local_world: int = 1

    @property
    def many(self) -> bool:
        return self.world > 1

    @property
    def main(self) -> bool:
        """The one process that prints, writes checkpoints and metrics."""
        return self.rank == 0

    def shard(self, count: int, what: str = "--batch-size") -> slice:
        """This rank's contiguous share of ``count`` items; an uneven split is the user's to fix."""
        if count % self.world:
            raise UserError(
                f"{what} {count} cannot be split evenly between {self.world} processes, expected a multiple "
                f"of {self.world}"
            )
        share = count // self.world
        return slice(self.rank * share, (self.rank + 1) * share)


SINGLE = Processes()


def launched() -> Processes:
    """The processes torchrun started (as told by its environment), or one process."""
    env = os.environ
    if int(env.get("WORLD_SIZE", "1")) <= 1:
        return SINGLE
    return Processes(
        rank=int(env["RANK"]),
        world=int(env["WORLD_SIZE"]),
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_world=int(env.get("LOCAL_WORLD_SIZE", env["WORLD_SIZE"])),
    )


def start(procs: Processes) -> None:
    """Join the process group, and give each process on this machine its share of the cores."""
    if not procs.many or dist.is_initialized():
        return
    if torch.cuda.is_available():
        torch.cuda.set_device(procs.local_rank)
    dist.init_process_group("cpu:gloo,cuda:nccl" if torch.cuda.is_available() else "gloo", timeout=TIMEOUT)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(max(1, cores // procs.local_world))


def stop(procs: Processes, finished: bool = False) -> None:
    """Leave the process group. After a session that every process ``finished``, wait for all
    first: the source of the last broadcast returns as soon as it has sent, and must not close its
    connections while the others still read from them. (After an error, some may never come.)"""
    if procs.many and dist.is_initialized():
        gc.collect()  # a wrapped model left in a cycle holds the group: freed now, not at interpreter exit
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def sum_all(procs: Processes, values: list[float]) -> list[float]:
    """``values`` summed over every process (float64)."""
    return _reduce(procs, values, dist.ReduceOp.SUM) if procs.many else values


def max_all(procs: Processes, values: list[float]) -> list[float]:
    """The largest of each of ``values`` over every process."""
    return _reduce(procs, values, dist.ReduceOp.MAX) if procs.many else values


def _reduce(procs: Processes, values: list[float], op: dist.ReduceOp) -> list[float]:
    t = torch.tensor(values, dtype=torch.float64)  # on the CPU: gloo carries it
    dist.all_reduce(t, op=op)
    return t.tolist()


def gather_rows(procs: Processes, t: torch.Tensor, dim: int) -> torch.Tensor:
    """Every process's ``t`` (same shape) joined along ``dim`` in rank order, on every process."""
    if not procs.many:
        return t
    parts = [torch.empty_like(t) for _ in range(procs.world)]
    dist.all_gather(parts, t.contiguous())
    return torch.cat(parts, dim)


def gather_objects(procs: Processes, obj: T) -> list[T]:
    """Every process's ``obj`` (picklable; only our own processes exchange them), in rank order."""
    if not procs.many:
        return [obj]
    out: list[Any] = [None] * procs.world
    dist.all_gather_object(out, obj)
    return out


def from_main(procs: Processes, obj: T) -> T:
    """The main process's ``obj``, on every process."""
    if not procs.many:
        return obj
    box = [obj if procs.main else None]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def main_first(procs: Processes, work: Callable[[], T], local: bool = False) -> T:
    """Run ``work`` on the main process (or each machine's first, with ``local``) before the
    others, so that one process fills a cache the others then read; a user error there is
    raised on every process, so that none waits forever for the one that stopped."""
    if not procs.many:
        return work()
    first = procs.local_rank == 0 if local else procs.main
    result: Any = None
    failure: Exception | None = None
    if first:
        try:
            result = work()
        except Exception as e:  # told to the others below, then raised here as it is
            failure = e
    said = "" if failure is None else str(failure) if isinstance(failure, UserError) else f"process {procs.rank} failed"
    messages = [m for m in gather_objects(procs, said) if m]
    if failure is not None:
        raise failure
    if messages:
        raise UserError(messages[0])
    return result if first else work()


def on_main(procs: Processes, work: Callable[[], T]) -> T:
    """Run ``work`` on the main process only and give its result to every process; a user error
    there is raised on every process."""
    if not procs.many:
        return work()
    result: Any = None
    failure: Exception | None = None
    if procs.main:
        try:
            result = work()
        except Exception as e:  # told to the others below, then raised here as it is
            failure = e
    said = "" if failure is None else str(failure) if isinstance(failure, UserError) else "process 0 failed"
    result, said = from_main(procs, (result, said))
    if failure is not None:
        raise failure
    if said:
        raise UserError(said)
    return result
