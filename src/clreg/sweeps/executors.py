"""Where a sweep's runs execute: in this process, in local worker processes, or on a Ray cluster.

Every executor runs `execute(config, ...)`, which never raises: it returns a record with status done,
diverged or failed. The sweep driver alone writes to the store, so workers (and Ray nodes) need no
access to it.
"""
from __future__ import annotations

import multiprocessing
import os
import socket
import threading
import time
import traceback
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from pathlib import Path

import torch

from clreg.train.config import RunConfig
from clreg.sweeps.scheduling import least_busy, worker_devices
from clreg.core.records import machine, versions
from clreg.train.checkpoint import discard_unusable
from clreg.core.threads import choose_threads
from clreg.train.steplog import JsonLines, StepLog


def execute(config: dict, threads: int | None = None, runtime: dict | None = None,
            checkpoint_dir: str | None = None) -> dict:
    """Run one config (a canonical dict) to a record: status, result, error, diverged_step, seconds,
    versions, machine, host. With `checkpoint_dir`, the run saves a checkpoint after every task and
    resumes from it (a run interrupted in an earlier sweep continues where it stopped), and writes its step
    log there as KEY.steps.jsonl (kept when the run is done; the checkpoint is removed)."""
    from clreg.train.guard import Diverged
    from clreg.train.loop import run  # imported here: worker processes pay for it once, at first use

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    record = {"host": socket.gethostname(), "versions": versions(), "machine": machine()}
    checkpoint, log = None, None
    try:
        run_config = RunConfig.from_dict(config, **(runtime or {}))
        if checkpoint_dir:
            checkpoint = Path(checkpoint_dir) / f"{run_config.key()}.pt"
            discard_unusable(checkpoint, run_config.canonical())  # corrupted: the run starts from scratch
            log = StepLog([JsonLines(Path(checkpoint_dir) / f"{run_config.key()}.steps.jsonl")])
        record.update(status="done", result=run(run_config, progress=False, checkpoint_path=checkpoint, resume=True,
                                                log=log))
    except Diverged as err:
        record.update(diverged(err))
    except Exception as err:
        record.update(failed(err))
    if checkpoint is not None and record["status"] != "failed":
        checkpoint.unlink(missing_ok=True)
    record["seconds"] = time.perf_counter() - start
    return record


def diverged(err) -> dict:
    """The record entries of a run that diverged (a clreg.train.guard.Diverged)."""
    return {"status": "diverged", "error": str(err), "diverged_step": err.step,
            "result": {"diverged_step": err.step, "diverged_task": err.task, "diverged_value": err.what,
                       "loss": str(err.loss)}}


def failed(err: Exception) -> dict:
    """The record entries of a run that failed with `err` (call within its `except`: the traceback is kept)."""
    message = str(err).strip().splitlines()[0] if str(err).strip() else ""
    return {"status": "failed", "error": traceback.format_exc(limit=-8),
            "message": f"{type(err).__name__}: {message}" if message else type(err).__name__}


def execute_group(configs: list[dict], threads: int | None = None, runtime: dict | None = None,
                  checkpoint_dir: str | None = None) -> list[dict]:
    """`execute` for runs trained together in one vectorised job (clreg.vectorized.trainer): one record per config, in
    order. A run that diverges is recorded as diverged while the others go on; an error of the job fails
    every run in it. Checkpoints and step logs as for `execute`, one per run."""
    from clreg.train.guard import Diverged
    from clreg.vectorized.trainer import VectorizedTrainer

    start = time.perf_counter()
    if threads:
        torch.set_num_threads(threads)
    base = {"host": socket.gethostname(), "versions": versions(), "machine": machine()}
    paths: list[Path] = []
    try:
        run_configs = [RunConfig.from_dict(config, **(runtime or {})) for config in configs]
        logs = None
        if checkpoint_dir:
            paths = [Path(checkpoint_dir) / f"{c.key()}.pt" for c in run_configs]
            for c, path in zip(run_configs, paths):
                discard_unusable(path, c.canonical())  # corrupted: the run starts from scratch
            logs = [StepLog([JsonLines(Path(checkpoint_dir) / f"{c.key()}.steps.jsonl")]) for c in run_configs]
        outcomes = VectorizedTrainer(run_configs, logs=logs).run(paths or None, resume=True)
        records = [{**base, **(diverged(o) if isinstance(o, Diverged) else {"status": "done", "result": o})}
                   for o in outcomes]
    except Exception as err:
        records = [{**base, **failed(err)} for _ in configs]
    for record, path in zip(records, paths):
        if record["status"] != "failed":
            path.unlink(missing_ok=True)
    seconds = time.perf_counter() - start
    for record in records:
        record["seconds"] = seconds  # the job's: shared by its runs
    return records


def threads_per_worker(workers: int, threads: int | None = None) -> int:
    """Threads for each of `workers` runs side by side: `threads`, else the idle cores shared out (at least 1)."""
    return choose_threads(threads, workers)[0]


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


def worker_pool(workers: int) -> ProcessPoolExecutor:
    """`workers` spawned processes (no state shared) that end themselves once this process is gone, killed even
    by SIGKILL: a worker left behind would train on, its result lost, while the next sweep claims its run again
    and two processes write one run's checkpoint."""
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"),
                               initializer=_exit_with_parent, initargs=(os.getpid(),))


def _exit_with_parent(parent: int) -> None:
    """In a worker: end the process as soon as its parent `parent` is gone (it is then another's child). Task
    checkpoints are written atomically, so ending mid-write keeps the previous one."""
    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, name="clreg-exit-with-parent", daemon=True).start()


class ProcessExecutor:
    """`workers` local processes (spawned, so no state is shared), each with its share of the cores; on CUDA
    each run in flight takes the visible GPU that has the fewest runs (one each while there are enough)."""

    def __init__(self, workers: int, threads: int | None = None, runtime: dict | None = None,
                 checkpoint_dir: str | None = None):
        self.slots, self.threads = workers, threads_per_worker(workers, threads)
        self.runtime, self.checkpoint_dir = runtime or {}, checkpoint_dir
        self.devices = worker_devices(self.runtime.get("device", "auto"), workers)  # None: the CPU
        self.pool = worker_pool(workers)
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


AUTO_LIMIT = 64  # --vectorize auto: at most this many runs in one job


def run_job(configs: list[dict], threads: int | None, runtime: dict, checkpoint_dir: str | None) -> list[dict]:
    """One job of VectorizedExecutor: a lone run as `execute`, several as `execute_group`."""
    if len(configs) == 1:
        return [execute(configs[0], threads, runtime, checkpoint_dir)]
    return execute_group(configs, threads, runtime, checkpoint_dir)


class VectorizedExecutor:
    """Trains the runs it is given in vectorised jobs (clreg.vectorized.trainer) of up to `size` runs that can share
    one (the same group_key); 'auto' sizes each job to the device's free memory. A run that cannot be
    vectorised goes alone. One job at a time in this process, or `workers` jobs side by side in worker
    processes (with CUDA, each on the visible GPU with the fewest jobs)."""

    def __init__(self, size: int | str, workers: int = 1, threads: int | None = None, runtime: dict | None = None,
                 checkpoint_dir: str | None = None):
        if size != "auto" and (not isinstance(size, int) or size < 1):
            raise ValueError(f"--vectorize takes a number of runs >= 1 or 'auto', got {size!r}")
        self.size, self.workers = size, workers
        self.threads = threads_per_worker(workers, threads)
        self.runtime, self.checkpoint_dir = runtime or {}, checkpoint_dir
        self.slots = workers * (AUTO_LIMIT if size == "auto" else size)
        self.queue: list[tuple[str, dict]] = []
        self.groups: dict[str, tuple[RunConfig, str | None]] = {}  # queued run -> its config and group_key
        self.sizes: dict[str, int | str] = {}  # group key -> K, or why no run fits
        self.devices = worker_devices(self.runtime.get("device", "auto"), workers) if workers > 1 else None
        self.pool = worker_pool(workers) if workers > 1 else None
        self.futures: dict[Future, tuple[list[str], str | None]] = {}  # job -> (run keys, its GPU)

    def submit(self, key: str, config: dict) -> None:  # noqa: D102
        from clreg.vectorized.trainer import group_key, why_not

        self.queue.append((key, config))
        run = RunConfig.from_dict(config, **self.runtime)
        self.groups[key] = (run, None if why_not(run) else group_key(run))  # None: runs alone

    def next_job(self) -> tuple[list[tuple[str, dict]], str | None]:
        """The queue's first run and up to K − 1 more of its group; or that run alone with the reason no job
        fits (an error to record as its result)."""
        first, group = self.groups[self.queue[0][0]]
        size = 1 if group is None else self._size(first, group)
        if isinstance(size, str):
            job, error = self.queue[:1], size
        else:  # (the first run is the first of its group; group None: it alone)
            job, error = [item for item in self.queue if self.groups[item[0]][1] == group][:size], None
        self.queue = [item for item in self.queue if item not in job]
        for key, _ in job:
            del self.groups[key]
        return job, error

    def _size(self, config: RunConfig, group: str) -> int | str:
        if self.size != "auto":
            return self.size
        if group not in self.sizes:
            from clreg.train.loop import load_benchmark
            from clreg.vectorized.trainer import fitting_size

            try:
                self.sizes[group] = fitting_size(config, load_benchmark(config), AUTO_LIMIT)
            except ValueError as err:
                self.sizes[group] = str(err)
        return self.sizes[group]

    def wait(self, timeout: float) -> list[tuple[str, dict]]:  # noqa: D102
        if self.pool is None:
            job, error = self.next_job()
            return self._records(job, error) or \
                list(zip([key for key, _ in job], run_job([c for _, c in job], self.threads, self.runtime,
                                                           self.checkpoint_dir)))
        out: list[tuple[str, dict]] = []
        while self.queue and len(self.futures) < self.workers:
            job, error = self.next_job()
            out += self._records(job, error)
            if not error:
                self._start(job)
        if out:
            return out
        done, _ = wait(list(self.futures), timeout=timeout, return_when=FIRST_COMPLETED)
        for future in done:
            keys, _ = self.futures.pop(future)
            try:
                out += list(zip(keys, future.result()))
            except Exception as err:  # the worker process itself died (killed, out of memory)
                out += [(key, {"status": "failed", "error": f"worker process failed: {err!r}", "seconds": None})
                        for key in keys]
        return out

    def _records(self, job: list[tuple[str, dict]], error: str | None) -> list[tuple[str, dict]]:
        """Failed records for a job that cannot start (`error`), else nothing."""
        if error is None:
            return []
        return [(key, {"status": "failed", "error": error, "message": f"ValueError: {error}", "seconds": 0.0})
                for key, _ in job]

    def _start(self, job: list[tuple[str, dict]]) -> None:
        runtime = self.runtime
        if self.devices:
            runtime = {**runtime, "device": least_busy(self.devices, [gpu for _, gpu in self.futures.values()])}
        future = self.pool.submit(run_job, [c for _, c in job], self.threads, runtime, self.checkpoint_dir)
        self.futures[future] = ([key for key, _ in job], runtime["device"] if self.devices else None)

    def shutdown(self, cancel: bool = False) -> None:  # noqa: D102
        self.queue.clear()
        self.groups.clear()
        if self.pool is not None:
            if cancel:
                for process in list(getattr(self.pool, "_processes", {}).values()):
                    process.terminate()
            self.pool.shutdown(wait=not cancel, cancel_futures=cancel)
