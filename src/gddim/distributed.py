"""Running on several processes under `torchrun`: the process group, rank 0's word for all, agreement, interrupts.

With RANK, WORLD_SIZE and LOCAL_RANK set (torchrun), init_process_group joins the group, NCCL on GPUs and gloo
on CPU; without them it describes the single process, so callers write one code path for both.
"""

from __future__ import annotations

import os
import signal
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Callable

import torch
import torch.distributed as dist

# Ctrl-C, and what cluster schedulers and torchrun send to end a job
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


@dataclass(frozen=True)
class ProcessGroup:
    """This process's place in the group: its rank, the world size, its device, and whether it must close it."""

    rank: int
    world: int
    device: torch.device
    owns_group: bool

    @property
    def is_main(self) -> bool:
        """Rank 0, the one process that writes files and prints."""
        return self.rank == 0

    def close(self) -> None:
        """Leave the group if this process joined it (a group made by the caller is left to the caller)."""
        if self.owns_group:
            dist.destroy_process_group()


def init_process_group(device=None) -> ProcessGroup:
    """Join torchrun's process group when WORLD_SIZE > 1: NCCL on GPUs, gloo on CPU."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return ProcessGroup(0, 1, torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu")), False)
    local = int(os.environ.get("LOCAL_RANK", "0"))
    cuda = torch.cuda.is_available() and (device is None or torch.device(device).type == "cuda")
    if cuda:
        torch.cuda.set_device(local)
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if cuda else "gloo")
    return ProcessGroup(dist.get_rank(), dist.get_world_size(), torch.device(f"cuda:{local}" if cuda else "cpu"),
                        owns)


@contextmanager
def process_group(device=None):
    """init_process_group for the length of a block, closed however the block ends."""
    group = init_process_group(device)
    try:
        yield group
        if group.owns_group:  # every rank done before any tears down: gloo aborts a rank whose peer left mid-send
            dist.barrier()
    finally:
        group.close()


def from_rank0(value, world: int):
    """rank 0's value on every rank; an exception travels too and is raised everywhere, so no rank hangs."""
    box = [value]
    if world > 1:
        dist.broadcast_object_list(box, src=0)
    if isinstance(box[0], BaseException):
        raise box[0]
    return box[0]


def run_on_rank0(group: ProcessGroup, fn: Callable, *args):
    """fn(*args) computed on rank 0 only (e.g. reading a file) and its result, or its exception, on every rank."""
    value = None
    if group.is_main:
        try:
            value = fn(*args)
        except Exception as err:  # noqa: BLE001 - re-raised on every rank by from_rank0
            value = err
    return from_rank0(value, group.world)


def agree(loss: torch.Tensor, interrupted: bool, world: int) -> tuple[float, bool]:
    """The mean loss over ranks and whether any rank was interrupted: every rank takes the same decision."""
    if world == 1:
        return float(loss), interrupted
    both = torch.stack([loss.float(), torch.tensor(float(interrupted), device=loss.device)])
    dist.all_reduce(both)
    return float(both[0]) / world, bool(both[1] > 0)


def shard(n: int, group: ProcessGroup) -> range:
    """The items of 0..n-1 this rank handles: contiguous blocks, the first n mod world ranks one item larger."""
    size, extra = divmod(n, group.world)
    start = group.rank * size + min(group.rank, extra)
    return range(start, start + size + (group.rank < extra))


def gather_rows(rows: torch.Tensor, group: ProcessGroup) -> torch.Tensor:
    """Every rank's rows (dim 0, sizes may differ by rank) concatenated in rank order, on every rank; with the
    blocks of `shard` this puts items back in their order 0..n-1."""
    if group.world == 1:
        return rows
    sizes = [torch.zeros((), dtype=torch.long, device=rows.device) for _ in range(group.world)]
    dist.all_gather(sizes, torch.tensor(rows.shape[0], device=rows.device))
    longest = int(max(sizes))
    padded = torch.zeros((longest, *rows.shape[1:]), dtype=rows.dtype, device=rows.device)
    padded[:rows.shape[0]] = rows
    parts = [torch.empty_like(padded) for _ in range(group.world)]
    dist.all_gather(parts, padded)  # all_gather needs equal shapes: padded, then cut back
    return torch.cat([part[:int(size)] for part, size in zip(parts, sizes)])


def gather_to_rank0(tensor: torch.Tensor, group: ProcessGroup) -> list[torch.Tensor] | None:
    """Every rank's tensor (equal shapes), in rank order, on rank 0 only (None elsewhere): rank 0 alone holds them."""
    if group.world == 1:
        return [tensor]
    parts = [torch.empty_like(tensor) for _ in range(group.world)] if group.is_main else None
    dist.gather(tensor, parts, dst=0)
    return parts


class InterruptFlag:
    """A stop signal sets a flag instead of raising mid-update; a loop stops at its next boundary."""

    def __init__(self):
        self.signum: int | None = None
        self._old: dict = {}

    @property
    def raised(self) -> bool:
        return self.signum is not None

    def __enter__(self):
        if threading.current_thread() is threading.main_thread():
            self._old = {s: signal.signal(s, self._handle) for s in STOP_SIGNALS}
        return self

    def _handle(self, signum, frame):
        self.signum = signum

    def __exit__(self, *exc):
        for s, old in self._old.items():
            signal.signal(s, old)
