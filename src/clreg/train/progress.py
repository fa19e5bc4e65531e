"""Progress: one tqdm bar per task showing the running task loss, and a warning when a run will take long."""
from __future__ import annotations

import time

from tqdm import tqdm

from clreg.train.callbacks import Callback, RunningLoss


class ProgressBar(Callback):
    """A bar per task; every `every` steps it shows the mean task loss of those steps (one host read per
    `every` steps, so a GPU is not made to wait each step)."""

    def __init__(self, every: int = 25):
        self.every = every
        self.bar: tqdm | None = None
        self.loss = RunningLoss()

    def on_task_start(self, trainer, task: int, steps: int) -> None:  # noqa: D102
        if self.bar is not None:
            self.bar.close()  # a task search's attempt that diverged never reached on_train_end
        self.bar = tqdm(total=steps, desc=f"task {task + 1}/{trainer.bench.num_tasks}", leave=False)
        self.loss = RunningLoss()

    def on_step(self, trainer, step) -> None:  # noqa: D102
        self.loss.add(step.loss)
        self.bar.update(1)
        if self.loss.count == self.every:
            self.bar.set_postfix(loss=f"{self.loss.pop():.4f}", refresh=False)

    def on_train_end(self, trainer, task: int) -> None:  # noqa: D102
        self.bar.close()  # (not at on_task_end: a task search trains a task several times)


class LongRunWarning(Callback):
    """Times `probe` steps of the first task after `warmup` steps (first calls are slow), then says how long
    the whole run will take if that is more than `threshold` seconds (steps × seconds per step), with what
    shortens it."""

    def __init__(self, say, threshold: float = 600.0, warmup: int = 10, probe: int = 20):
        self.say, self.threshold, self.warmup, self.probe = say, threshold, warmup, probe
        self.total_steps, self.started, self.done = 0, 0.0, False

    def on_run_start(self, trainer) -> None:  # noqa: D102
        self.total_steps = sum(trainer.steps_per_task(t) for t in range(trainer.bench.num_tasks))

    def on_step(self, trainer, step) -> None:  # noqa: D102
        if self.done or step.task_step < self.warmup:
            return
        if step.task_step == self.warmup:
            self.started = time.perf_counter()
            return
        if step.task_step < self.warmup + self.probe and step.task_step < trainer.steps_per_task(step.task):
            return
        self.done = True
        per_step = (time.perf_counter() - self.started) / (step.task_step - self.warmup)
        estimate = per_step * self.total_steps
        if estimate > self.threshold:
            self.say(f"this run will take about {duration(estimate)}: {self.total_steps:,} steps at "
                     f"{1000 * per_step:.1f} ms per step (training only); --epochs, --tasks or --hidden shorten it")


def duration(seconds: float) -> str:
    """'45 s', '12 min', '3.5 h'."""
    if seconds < 90:
        return f"{seconds:.0f} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"
