"""`clreg run --nproc N`: one run trained data-parallel by N processes (`clreg.distributed.launch`).

Every process builds the same model from the same seed and draws the same batches; each trains on its
contiguous share of every batch, and the gradients are averaged across processes before the optimiser step
(weighted so that the result is the whole batch's mean gradient, whatever the shares' sizes), so the
parameters and the accuracy matrix are those of one process, to float rounding. Post-task measures run on
each process's share of the task's sample and are summed across them (clreg.distributed.collectives).
Process 0 writes the checkpoints, the step log and the result.
"""
from __future__ import annotations

from dataclasses import replace

import torch

from clreg.core.device import resolve_device
from clreg.distributed.launch import ParallelRunError, launch as launch_processes
from clreg.train.checkpoint import CheckpointError
from clreg.train.config import RunConfig
from clreg.train.guard import Diverged
from clreg.train.loop import run
from clreg.train.steplog import JsonLines, StepLog, TensorBoard

__all__ = ["ParallelRunError", "check", "launch"]


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
    """Train `config` in `nproc` processes; returns process 0's result (as `clreg.train.loop.run` does). Raises
    ParallelRunError with the message of a divergence, a checkpoint that does not fit, or a bad setting."""
    check(config, nproc)
    settings = dict(progress=progress, checkpoint_path=checkpoint_path, resume=resume, log_path=log_path,
                    tensorboard=tensorboard, log_every=log_every)
    cuda = resolve_device(config.device).type == "cuda"
    return launch_processes(_train, (config.to_dict(), settings), nproc, cuda,
                            expected=(Diverged, CheckpointError, ValueError))


def _train(rank: int, payload: tuple[dict, dict]) -> dict:
    """Process `rank`'s share of the run (process 0 keeps the logs)."""
    config, settings = RunConfig.from_dict(payload[0]), payload[1]
    if resolve_device(config.device).type == "cuda":
        config = replace(config, device=f"cuda:{rank}")
    first = rank == 0
    sinks = [*([JsonLines(settings["log_path"])] if first and settings["log_path"] else []),
             *([TensorBoard(settings["tensorboard"])] if first and settings["tensorboard"] else [])]
    return run(config, progress=first and settings["progress"], checkpoint_path=settings["checkpoint_path"],
               resume=settings["resume"], log=StepLog(sinks, every=settings["log_every"]))
