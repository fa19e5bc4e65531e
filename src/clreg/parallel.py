"""`clreg run --nproc N`: one run trained data-parallel by N processes (torch.distributed: gloo on the CPU,
NCCL on GPUs, one GPU per process).

Every process builds the same model from the same seed and draws the same batches; each trains on its
contiguous share of every batch, and the gradients are averaged across processes before the optimiser step
(weighted so that the result is the whole batch's mean gradient, whatever the shares' sizes), so the
parameters and the accuracy matrix are those of one process, to float rounding. Post-task measures run on
each process's share of the task's sample and are summed across them (clreg.distributed). Process 0 writes
the checkpoints, the step log and the result.
"""
from __future__ import annotations

import os
import tempfile
from dataclasses import replace

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from .checkpoint import CheckpointError
from .config import RunConfig
from .device import resolve_device
from .steplog import JsonLines, StepLog, TensorBoard


class ParallelRunError(RuntimeError):
    """A process of a data-parallel run failed; its message is this one's."""


def check(config: RunConfig, nproc: int) -> None:
    """ValueError where `nproc` processes cannot train `config` (too few GPUs for one each)."""
    if nproc < 1:
        raise ValueError(f"--nproc must be at least 1, got {nproc}")
    device = resolve_device(config.device)
    if device.type == "cuda" and torch.cuda.device_count() < nproc:
        raise ValueError(f"--nproc {nproc} on CUDA needs one GPU per process; {torch.cuda.device_count()} visible")


def launch(config: RunConfig, nproc: int, progress: bool = True, checkpoint_path: str | None = None,
           resume: bool = False, log_path: str | None = None, tensorboard: str | None = None,
           log_every: int | None = None) -> dict:
    """Train `config` in `nproc` processes; returns process 0's result (as `clreg.train.run` does). Raises
    ParallelRunError with the message of a divergence, a checkpoint that does not fit, or a bad setting."""
    check(config, nproc)
    with tempfile.TemporaryDirectory(prefix="clreg-nproc-") as folder:
        settings = dict(progress=progress, checkpoint_path=checkpoint_path, resume=resume, log_path=log_path,
                        tensorboard=tensorboard, log_every=log_every)
        mp.start_processes(_worker, args=(config.to_dict(), nproc, folder, settings), nprocs=nproc,
                           start_method="spawn")
        outcome = torch.load(os.path.join(folder, "outcome.pt"), weights_only=False)  # written by process 0
    if "error" in outcome:
        raise ParallelRunError(outcome["error"])
    return outcome["result"]


def _worker(rank: int, config: dict, nproc: int, folder: str, settings: dict) -> None:
    from .train import Diverged, run  # (in the process: spawn imports this module afresh)

    config = RunConfig.from_dict(config)
    device = resolve_device(config.device)
    if device.type == "cuda":
        torch.cuda.set_device(rank)
        config = replace(config, device=f"cuda:{rank}")
    torch.set_num_threads(max(1, (os.cpu_count() or 1) // nproc))
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", init_method=f"file://{folder}/rendezvous",
                            rank=rank, world_size=nproc)
    try:
        first = rank == 0
        sinks = [*([JsonLines(settings["log_path"])] if first and settings["log_path"] else []),
                 *([TensorBoard(settings["tensorboard"])] if first and settings["tensorboard"] else [])]
        try:
            result = run(config, progress=first and settings["progress"], checkpoint_path=settings["checkpoint_path"],
                         resume=settings["resume"], log=StepLog(sinks, every=settings["log_every"]))
            outcome = {"result": result}
        except (Diverged, CheckpointError, ValueError) as err:  # every process meets it: the loss is shared
            outcome = {"error": str(err)}
        if first:
            torch.save(outcome, os.path.join(folder, "outcome.pt"))
    finally:
        dist.destroy_process_group()
