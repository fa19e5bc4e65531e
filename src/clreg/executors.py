"""Where a sweep's runs execute: in this process, in local worker processes, or on a Ray cluster.

Every executor runs `execute(config, ...)`, which never raises: it returns a record with status done,
diverged or failed. The sweep driver alone writes to the store, so workers (and Ray nodes) need no
access to it.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from .config import RunConfig
from .device import least_busy, worker_devices
from .results import machine, versions
from .steplog import JsonLines, StepLog


def execute(config: dict, threads: int | None = None, runtime: dict | None = None,
            checkpoint_dir: str | None = None) -> dict:
    """Run one config (a canonical dict) to a record: status, result, error, diverged_step, seconds,
    versions, machine, host. With `checkpoint_dir`, the run saves a checkpoint after every task and
    resumes from it (a run interrupted in an earlier sweep continues where it stopped), and writes its step
    log there as KEY.steps.jsonl (kept when the run is done; the checkpoint is removed)."""
    from .train import Diverged, run  # imported here: worker processes pay for it once, at first use

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    record = {"host": socket.gethostname(), "versions": versions(), "machine": machine()}
    checkpoint, log = None, None
    try:
        run_config = RunConfig.from_dict(config, **(runtime or {}))
        if checkpoint_dir:
            checkpoint = Path(checkpoint_dir) / f"{run_config.key()}.pt"
            log = StepLog([JsonLines(Path(checkpoint_dir) / f"{run_config.key()}.steps.jsonl")])
        record.update(status="done", result=run(run_config, progress=False, checkpoint_path=checkpoint, resume=True,
                                                log=log))
    except Diverged as err:
        record.update(status="diverged", error=str(err), diverged_step=err.step,
                      result={"diverged_step": err.step, "diverged_task": err.task, "loss": str(err.loss)})
    except Exception as err:
        message = str(err).strip().splitlines()[0] if str(err).strip() else ""
        record.update(status="failed", error=traceback.format_exc(limit=-8),
                      message=f"{type(err).__name__}: {message}" if message else type(err).__name__)
    if checkpoint is not None and record["status"] != "failed":
        checkpoint.unlink(missing_ok=True)
    record["seconds"] = time.perf_counter() - start
    return record


def threads_per_worker(workers: int, threads: int | None = None) -> int:
    """Threads for each of `workers` runs side by side: `threads`, else the cores shared out (at least 1)."""
    return threads or max(1, (os.cpu_count() or 1) // workers)


class InlineExecutor:
    """One run at a time in this process (--workers 1)."""

    def __init__(self, threads: int | None = None, runtime: dict | None = None, checkpoint_dir: str | None = None):
        self.slots, self.threads, self.runtime, self.checkpoint_dir = 1, threads_per_worker(1, threads), runtime, checkpoint_dir
        self.queue: list[tuple[str, dict]] = []

    def submit(self, key: str, config: dict) -> None:  # noqa: D102
        self.queue.append((key, config))

    def wait(self, timeout: float) -> list[tuple[str, dict]]:  # noqa: D102
        key, config = self.queue.pop(0)
        return [(key, execute(config, self.threads, self.runtime, self.checkpoint_dir))]

    def shutdown(self, cancel: bool = False) -> None:  # noqa: D102
        self.queue.clear()


class ProcessExecutor:
    """`workers` local processes (spawned, so no state is shared), each with its share of the cores; on CUDA
    each run in flight takes the visible GPU that has the fewest runs (one each while there are enough)."""

    def __init__(self, workers: int, threads: int | None = None, runtime: dict | None = None,
                 checkpoint_dir: str | None = None):
        self.slots, self.threads = workers, threads_per_worker(workers, threads)
        self.runtime, self.checkpoint_dir = runtime or {}, checkpoint_dir
        self.devices = worker_devices(self.runtime.get("device", "auto"), workers)  # None: the CPU
        self.pool = ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))
        self.futures: dict[Future, tuple[str, str | None]] = {}  # future -> (run key, the GPU it uses)

    def submit(self, key: str, config: dict) -> None:  # noqa: D102
        runtime = self.runtime
        if self.devices:
            runtime = {**runtime, "device": least_busy(self.devices, [gpu for _, gpu in self.futures.values()])}
        future = self.pool.submit(execute, config, self.threads, runtime, self.checkpoint_dir)
        self.futures[future] = (key, runtime["device"] if self.devices else None)

    def wait(self, timeout: float) -> list[tuple[str, dict]]:  # noqa: D102
        done, _ = wait(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
        out = []
        for future in done:
            key, _ = self.futures.pop(future)
            try:
                out.append((key, future.result()))
            except Exception as err:  # the worker process itself died (killed, out of memory)
                out.append((key, {"status": "failed", "error": f"worker process failed: {err!r}", "seconds": None}))
        return out

    def shutdown(self, cancel: bool = False) -> None:  # noqa: D102
        if cancel:
            for process in list(getattr(self.pool, "_processes", {}).values()):
                process.terminate()  # runs in flight are handed back to the store by the driver
        self.pool.shutdown(wait=not cancel, cancel_futures=cancel)


class RayExecutor:
    """Runs on a Ray cluster (`address`: 'local' starts one here, 'auto' or ray://... connects); each run
    asks for `threads` CPUs. Workers need clreg and the data (`--data-dir`) at the same paths."""

    def __init__(self, address: str, workers: int | None = None, threads: int | None = None,
                 runtime: dict | None = None, checkpoint_dir: str | None = None):
        try:
            import ray
        except ImportError:
            raise RuntimeError("the ray backend needs Ray: pip install 'clreg[ray]' (or pip install ray)") from None
        self.ray = ray
        ray.init(address=None if address == "local" else address, include_dashboard=False, log_to_driver=False,
                 ignore_reinit_error=True, configure_logging=False)
        resources = ray.cluster_resources()
        cpus, gpus = int(resources.get("CPU", 1)), int(resources.get("GPU", 0))
        self.threads = threads or 1
        device = (runtime or {}).get("device", "auto")
        self.gpus = 1 if device.startswith("cuda") or (device == "auto" and gpus > 0) else 0  # per run
        if self.gpus and not gpus:
            raise RuntimeError(f"--device {device}: the Ray cluster has no GPU")
        self.slots = workers or max(1, min(cpus // self.threads, gpus if self.gpus else cpus))
        runtime = {**(runtime or {}), **({"device": "cuda"} if self.gpus else {})}  # Ray shows each task its GPU
        self.remote = ray.remote(num_cpus=self.threads, num_gpus=self.gpus, max_retries=0)(execute)
        self.runtime, self.checkpoint_dir = runtime, checkpoint_dir
        self.refs: dict = {}

    def submit(self, key: str, config: dict) -> None:  # noqa: D102
        self.refs[self.remote.remote(config, self.threads, self.runtime, self.checkpoint_dir)] = key

    def wait(self, timeout: float) -> list[tuple[str, dict]]:  # noqa: D102
        ready, _ = self.ray.wait(list(self.refs), num_returns=1, timeout=timeout)
        out = []
        for ref in ready:
            key = self.refs.pop(ref)
            try:
                out.append((key, self.ray.get(ref)))
            except Exception as err:  # the Ray worker died
                out.append((key, {"status": "failed", "error": f"ray task failed: {err!r}", "seconds": None}))
        return out

    def shutdown(self, cancel: bool = False) -> None:  # noqa: D102
        if cancel:
            for ref in self.refs:
                self.ray.cancel(ref, force=True)
        self.refs.clear()
        self.ray.shutdown()
