"""N processes of one job (torch.distributed: gloo on the CPU, NCCL on GPUs, one GPU per process).

`launch(target, payload, nproc, cuda, expected)` starts `target(rank, payload)` in `nproc` spawned processes that
have joined one process group, and returns what process 0's call returned. An error of one of the `expected`
types (a bad setting, a divergence: every process meets it) comes back as ParallelRunError with its message.
What the processes train is the caller's: `clreg.train.nproc` trains one run.
"""
from __future__ import annotations

import os
import tempfile
from typing import Any, Callable

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from clreg.core.threads import choose_threads


class ParallelRunError(RuntimeError):
    """A process of a data-parallel job failed; its message is this one's."""


def launch(target: Callable[[int, Any], Any], payload: Any, nproc: int, cuda: bool,
           expected: tuple[type[BaseException], ...] = (ValueError,)) -> Any:
    """Run `target(rank, payload)` in `nproc` processes; return process 0's result (see the module docstring).
    `target` must be a module-level function (spawn imports it afresh in each process)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    if cuda and torch.cuda.device_count() < nproc:
        raise ValueError(f"--nproc {nproc} on CUDA needs one GPU per process; {torch.cuda.device_count()} visible")
    with tempfile.TemporaryDirectory(prefix="clreg-nproc-") as folder:
        mp.start_processes(_worker, args=(target, payload, nproc, cuda, expected, folder), nprocs=nproc,
                           start_method="spawn")
        outcome = torch.load(os.path.join(folder, "outcome.pt"), weights_only=False)  # written by process 0
    if "error" in outcome:
        raise ParallelRunError(outcome["error"])
    return outcome["result"]


def _worker(rank: int, target, payload, nproc: int, cuda: bool, expected: tuple, folder: str) -> None:
    if cuda:
        torch.cuda.set_device(rank)
    torch.set_num_threads(choose_threads(None, nproc)[0])  # the idle cores shared out
    dist.init_process_group("nccl" if cuda else "gloo", init_method=f"file://{folder}/rendezvous",
                            rank=rank, world_size=nproc)
    try:
        try:
            outcome = {"result": target(rank, payload)}
        except expected as err:  # every process meets it: the loss and the settings are shared
            outcome = {"error": str(err)}
        if rank == 0:
            torch.save(outcome, os.path.join(folder, "outcome.pt"))
    finally:
        dist.destroy_process_group()
