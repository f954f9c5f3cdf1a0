"""Run a function in several spawned processes (ranks of a process group), never hanging."""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

import torch.multiprocessing as mp


def run_ranks(worker: Callable[..., None], args: tuple[Any, ...], nprocs: int, seconds: float):
    """``worker(rank, *args)`` in ``nprocs`` spawned processes; the processes are killed and
    the test fails if they have not all finished within ``seconds``."""
    context = mp.start_processes(worker, args=args, nprocs=nprocs, join=False, start_method="spawn")
    deadline = time.monotonic() + seconds
    while not context.join(timeout=2):
        if time.monotonic() > deadline:
            for process in context.processes:
                process.kill()
            raise AssertionError(f"the {nprocs} processes did not finish within {seconds} s")
