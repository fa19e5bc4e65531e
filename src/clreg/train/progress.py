"""Progress: one tqdm bar per task showing the running task loss, and a warning when a run will take long."""
from __future__ import annotations

import sys
import time
import warnings
from contextlib import contextmanager
from typing import Iterator

from clreg.core.extras import need
from clreg.train.callbacks import Callback, RunningLoss


class ProgressBar(Callback):
    """A bar per task; every `every` steps it shows the mean task loss of those steps (one host read per
    `every` steps, so a GPU is not made to wait each step)."""

    def __init__(self, every: int = 25):
        self.every = every
        self.bar = None  # a tqdm bar while a task trains
        self.tqdm = need("tqdm", "the progress bars (progress=False runs without)").tqdm
        self.loss = RunningLoss()

    def on_task_start(self, trainer, task: int, steps: int) -> None:  # noqa: D102
        if self.bar is not None:
            self.bar.close()  # a task search's attempt that diverged never reached on_train_end
        self.bar = self.tqdm(total=steps, desc=f"task {task + 1}/{trainer.bench.num_tasks}", leave=False)
        self.loss = RunningLoss()

    def on_step(self, trainer, step) -> None:  # noqa: D102
        self.loss.add(step.loss)
        self.bar.update(1)
        if self.loss.count == self.every:
            self.bar.set_postfix(loss=f"{self.loss.pop():.4f}", refresh=False)

    def on_train_end(self, trainer, task: int) -> None:  # noqa: D102
        self.bar.close()  # (not at on_task_end: a task search trains a task several times)


class LongRunWarning(Callback):
    """Says how long the whole run will take, with what shortens it, when that is more than `threshold` seconds.

    The first task's steps are timed after `warmup` of them (first calls, allocations and caches are slow) over at
    least `probe` steps and `seconds` seconds: seconds per step × the run's steps. Where the first task ends
    before that window does, the estimate waits for its end and adds the task's importance and evaluation time
    once per task. Said once, through tqdm (above any progress bar)."""

    def __init__(self, say=None, threshold: float = 600.0, warmup: int = 50, probe: int = 200,
                 seconds: float = 30.0):
        self.say = say or write
        self.threshold, self.warmup, self.probe, self.seconds = threshold, warmup, probe, seconds
        self.total_steps, self.tasks, self.done = 0, 0, False
        self.started: float | None = None  # when the window began (after `warmup` steps of the first task)
        self.window = 0  # steps in the window
        self.task_start: dict = {}  # the first task's step count and timings at its start

    def on_run_start(self, trainer) -> None:  # noqa: D102
        self.tasks = trainer.bench.num_tasks
        self.total_steps = sum(trainer.steps_per_task(t) for t in range(self.tasks))

    def on_task_start(self, trainer, task: int, steps: int) -> None:  # noqa: D102
        if not self.task_start:
            self.task_start = {"steps": trainer.steps_done, **trainer.timing}

    def on_step(self, trainer, step) -> None:  # noqa: D102
        if self.done or step.task_step < self.warmup:
            return
        if self.started is None:
            self.started, self.window = time.perf_counter(), 0
            return
        self.window += 1
        elapsed = time.perf_counter() - self.started
        if self.window >= self.probe and elapsed >= self.seconds:
            self.report(elapsed / self.window, None)

    def on_evaluation(self, trainer, task: int, accuracy: list[float]) -> None:  # noqa: D102
        if self.done:
            return
        timing, start = trainer.timing, self.task_start
        steps = trainer.steps_done - start["steps"]
        per_step = (time.perf_counter() - self.started) / self.window if self.window else \
            (timing["train_seconds"] - start["train_seconds"]) / max(1, steps)
        other = sum(timing[name] - start[name] for name in ("importance_seconds", "evaluation_seconds"))
        self.report(per_step, other)

    def report(self, per_step: float, per_task: float | None) -> None:
        """Say the estimate from `per_step` training seconds and `per_task` seconds of importance and evaluation
        (None: not known yet) if it exceeds the threshold; in any case, say nothing more."""
        self.done = True
        estimate = per_step * self.total_steps + (per_task or 0.0) * self.tasks
        if estimate <= self.threshold:
            return
        parts = "training only" if per_task is None else \
            f"and {duration(per_task)} of importance and evaluation per task"
        self.say(f"this run will take about {duration(estimate)}: {self.total_steps:,} steps at "
                 f"{1000 * per_step:.1f} ms per step ({parts}); --epochs, --tasks or --hidden shorten it")


def write(line: str) -> None:
    """One line on stderr, above any progress bar (tqdm.write), not into it."""
    with above_bars():
        print(line, file=sys.stderr, flush=True)


@contextmanager
def above_bars() -> Iterator[None]:
    """Within: the progress bars are cleared, and drawn again on leaving (tqdm's external write mode; nothing
    without tqdm, which draws no bars then)."""
    try:
        from tqdm import tqdm
    except ImportError:
        yield
        return
    with tqdm.external_write_mode(file=sys.stderr):
        yield


@contextmanager
def warnings_above_bars() -> Iterator[None]:
    """Within: Python warnings are shown as before (by the printer in force: the CLI's one line), but above the
    progress bars; the printer is restored on leaving."""
    with warnings.catch_warnings():
        show = warnings.showwarning

        def above(*args, **kwargs) -> None:
            with above_bars():
                show(*args, **kwargs)

        warnings.showwarning = above
        yield


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
