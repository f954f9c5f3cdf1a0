"""Run a function in several spawned processes (ranks of a process group), never hanging: the
DDP benchmark and the DDP tests share it."""

from __future__ import annotations

import gc
import time
from collections.abc import Callable
from typing import Any

import torch.distributed as dist
import torch.multiprocessing as mp


def in_gloo_group(rank: int, world: int, store: str, work: Callable[[], None]) -> None:
    """Run ``work()`` as rank ``rank`` of a gloo process group of ``world`` ranks.

    Everything ``work`` made (DDP models, their reducers and communication hooks, which hold
    tensors, futures and Python callables) is freed before the group is destroyed, while the
    interpreter is fully alive: left to the interpreter's shutdown, such objects can abort the
    process ("terminate called without an active exception", SIGABRT) after its work is done.
    """
    dist.init_process_group("gloo", init_method=f"file://{store}", rank=rank, world_size=world)
    try:
        work()
    finally:
        gc.collect()
        dist.destroy_process_group()


def run_ranks(worker: Callable[..., None], args: tuple[Any, ...], nprocs: int, seconds: float):
    """``worker(rank, *args)`` in ``nprocs`` spawned processes; the processes are killed, and
    ``TimeoutError`` raised, if they have not all finished within ``seconds``."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + seconds
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise TimeoutError(f"the {nprocs} processes did not finish within {seconds} s")
