"""The continual loop: tasks × steps with a Regularizer, evaluation after each task (SPEC §1, §5)."""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from . import checkpoint, metrics
from .benchmarks import Benchmark, build_benchmark, derive_seed
from .config import RunConfig
from .device import (autocast, check_combination, describe, precision_scope, resolve_device, synchronize,
                     warn_if_slow)
from .models import build_model, reinitialize, task_forward
from .proxy import ProxyLog
from .regularizer import Regularizer, has_active_dropout


class Diverged(RuntimeError):
    """The training loss became NaN or infinite: the run stops (a sweep records it as diverged)."""

    def __init__(self, step: int, task: int, loss: float):
        super().__init__(f"diverged: the training loss became {loss} at step {step} (task {task + 1})")
        self.step, self.task, self.loss = step, task, loss


def index_stream(size: int, batch_size: int, generator: torch.Generator, drop_last: bool = False,
                 device: torch.device | str = "cpu") -> Iterator[Tensor]:
    """Endless minibatch indices from consecutive shuffles of range(size): cut across shuffles, or with
    `drop_last` ⌊size/b⌋ full batches per shuffle (epoch) and the rest dropped. Shuffles are drawn on the
    CPU (the same order on every device) and moved to `device` once each."""
    if drop_last and size < batch_size:
        raise ValueError(f"a task has {size} training examples, fewer than one batch of {batch_size}")
    buffer = torch.empty(0, dtype=torch.long, device=device)
    while True:
        while len(buffer) < batch_size:
            shuffle = torch.randperm(size, generator=generator).to(device)
            buffer = shuffle[:size - size % batch_size] if drop_last else torch.cat([buffer, shuffle])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, β = (0.9, 0.999), ε = 1e-8; the fused kernel (one pass per step) where available."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


@torch.no_grad()
def evaluate(model: nn.Module, bench: Benchmark, task: int) -> float:
    """Accuracy of `model` (through head `task` if it has heads) on the evaluation split of `task`."""
    was_training = model.training
    model.eval()
    forward = task_forward(model, task)
    correct, total = 0, 0
    for x, y in bench.evaluation_batches(task):
        correct = correct + (forward(x).argmax(1) == y).sum()  # stays on the device: one transfer per task
        total += len(y)
    model.train(was_training)
    return int(correct) / total


class DivergenceGuard:
    """Finds the first step whose training loss is NaN or infinite. Losses stay on the device and are
    checked every `every` steps and at task end (on the CPU, where a check costs nothing, every step), so
    a GPU never waits for the host; the error names the exact first bad step either way."""

    def __init__(self, device: torch.device, every: int | None = None):
        self.every = every or (1 if device.type == "cpu" else 50)
        self.losses: Tensor | None = None  # allocated at the first loss, with its dtype and device
        self.count = 0

    def record(self, loss: Tensor, step: int, task: int) -> None:
        """Keep step `step`'s loss (counted from 1); check when the buffer is full."""
        if self.losses is None:
            self.losses = loss.new_empty(self.every)
        self.losses[self.count] = loss.detach()
        self.count += 1
        if self.count == self.every:
            self.check(step, task)

    def check(self, step: int, task: int) -> None:
        """Raise Diverged for the first non-finite loss recorded up to step `step`, then start afresh."""
        if not self.count:
            return
        recorded, self.count = self.losses[:self.count], 0
        finite = torch.isfinite(recorded)
        if not bool(finite.all()):
            first = int((~finite).nonzero()[0, 0])
            raise Diverged(step - len(recorded) + 1 + first, task, float(recorded[first]))


class Trainer:
    """Trains one model on a task sequence with one Regularizer, following the paper's protocol."""

    def __init__(self, config: RunConfig, bench: Benchmark, progress: bool = True):
        self.device = resolve_device(config.device)
        check_combination(self.device, config.precision)
        warn_if_slow(self.device, config.precision)
        self.config, self.bench, self.progress = config, bench.to(self.device), progress
        torch.manual_seed(config.seed)
        self.init_generator = torch.Generator().manual_seed(derive_seed(config.seed, 2))
        self.model = build_model(config.network_name, bench.input_shape, config.widths, bench.classes,
                                 self.init_generator).to(self.device)
        self.guard = DivergenceGuard(self.device)
        self.reg = Regularizer(self.model, config.method, config.c, heads=("heads",) if bench.multi_head else (),
                               penalty=config.penalty, prior=config.prior, decay=config.decay,
                               keep_tasks=config.proxy_every > 0, **config.measure_options())
        self.dropout = has_active_dropout(self.model)
        self.timing = {"train_seconds": 0.0, "importance_seconds": 0.0, "evaluation_seconds": 0.0}
        self.proxies = ProxyLog(self.model, self.reg, bench, config.proxy_samples) if config.proxy_every else None
        self.steps_done = 0
        self.current_task = 0
        self.revisit: dict | None = None

    def run(self, checkpoint_path: str | Path | None = None, resume: bool = False) -> np.ndarray:
        """Train on every task; return the accuracy matrix A[k, j]. With `checkpoint_path`, the state is
        saved after every task; with `resume` too, a run starts from that checkpoint when it exists."""
        k_total = self.bench.num_tasks
        accuracy = np.zeros((k_total, k_total))
        first = 0
        if resume and checkpoint_path is not None and Path(checkpoint_path).exists():
            first = self.load_state_dict(checkpoint.load(checkpoint_path, self.config.canonical()), accuracy)
        with precision_scope(self.device, self.config.precision):
            self._train_tasks(first, accuracy, checkpoint_path)
        return accuracy

    def _train_tasks(self, first: int, accuracy: np.ndarray, checkpoint_path: str | Path | None) -> None:
        k_total = self.bench.num_tasks
        for task in range(first, k_total):
            self.train_task(task)
            start = time.perf_counter()
            accuracy[task] = [evaluate(self.model, self.bench, j) for j in range(k_total)]
            self.timing["evaluation_seconds"] += time.perf_counter() - start
            if checkpoint_path is not None:
                checkpoint.save(checkpoint_path, self.state_dict(accuracy[:task + 1]))
        if self.config.revisit:
            self.revisit_first_task(accuracy[-1].tolist())

    def state_dict(self, accuracy: np.ndarray) -> dict:
        """Everything a resumed run needs after the tasks whose accuracy rows are given: model, penalty,
        random generators, timings, and the rows themselves (tensors and plain data only)."""
        return {"config": self.config.canonical(), "tasks_done": len(accuracy), "accuracy": accuracy.tolist(),
                "model": self.model.state_dict(), "regularizer": self.reg.state_dict(),
                "init_generator": self.init_generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None,
                "timing": dict(self.timing), "steps_done": self.steps_done,
                "proxies": None if self.proxies is None else self.proxies.state_dict()}

    def load_state_dict(self, state: dict, accuracy: np.ndarray) -> int:
        """Restore a `state_dict`, fill the finished rows of `accuracy`; return the next task to train."""
        done = int(state["tasks_done"])
        accuracy[:done] = np.asarray(state["accuracy"])
        self.model.load_state_dict(state["model"])
        self.reg.load_state_dict(state["regularizer"])
        self.init_generator.set_state(state["init_generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:  # dropout draws on the GPU
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)
        self.timing.update(state["timing"])
        self.steps_done = int(state["steps_done"])
        if self.proxies is not None:
            self.proxies.load_state_dict(state["proxies"])
        return done

    def revisit_first_task(self, before: list[float]) -> None:
        """Drop task 1's penalty term (debiased) and learn task 1 again as if new; evaluate all tasks.
        `before` is the accuracy on every task after the last one (the accuracy matrix's last row)."""
        self.reg.drop_task(0)
        self.train_task(0, reinit=False)
        after = [evaluate(self.model, self.bench, j) for j in range(self.bench.num_tasks)]
        self.revisit = {"task": 0, "accuracy_before": before, "accuracy_after": after}

    def steps_per_task(self, task: int) -> int:
        """Epochs × ⌊epoch size / b⌋ steps (at least one per epoch); with equal_iter, task t's epochs are
        multiplied by round(n_1 / n_t), so that every task gets about as many steps as the first (10× for
        tasks 2–6 of split-cifar10-100, as in SPEC §5)."""
        epochs = self.config.epochs
        if self.config.equal_iter:
            epochs *= max(1, round(self.bench.epoch_size(0) / self.bench.epoch_size(task)))
        return epochs * max(1, self.bench.epoch_size(task) // self.config.batch_size)

    def train_task(self, task: int, reinit: bool = True) -> None:
        """The steps of one task, then the importance measurement and consolidation."""
        cfg, reg = self.config, self.reg
        if task > 0 and cfg.reinit and reinit:
            reinitialize(self.model, set(reg.names), self.init_generator)
            reg.begin_task()
        self.current_task = task
        self.task_started(task)
        optimizer = make_optimizer(self.model, cfg.learning_rate)
        size, drop_last = self.bench.train_size(task), self.bench.drop_last
        batches = index_stream(size, cfg.batch_size, torch.Generator().manual_seed(derive_seed(cfg.seed, 3, task)),
                               drop_last, self.device)
        independent = None
        if self.wants_independent_batches():
            independent = index_stream(size, cfg.batch_size,
                                       torch.Generator().manual_seed(derive_seed(cfg.seed, 4, task)), drop_last,
                                       self.device)
        forward = task_forward(self.model, task)
        start = time.perf_counter()
        steps = range(self.steps_per_task(task))
        for _ in tqdm(steps, desc=f"task {task + 1}/{self.bench.num_tasks}", disable=not self.progress, leave=False):
            x, y = self.bench.batch(task, next(batches))
            self.step(optimizer, forward, x, y,
                      None if independent is None else self.bench.batch(task, next(independent)))
            self.steps_done += 1
            if self.proxies is not None and self.steps_done % cfg.proxy_every == 0:
                self.proxies.log(self.steps_done, task)
        self.guard.check(self.steps_done, task)
        synchronize(self.device)
        self.timing["train_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        self.consolidate(task)
        self.timing["importance_seconds"] += time.perf_counter() - start
        if self.proxies is not None and reg.measure.regularizes:
            self.proxies.task_end(task)
        self.task_ended(task)

    def wants_independent_batches(self) -> bool:
        """True if each step needs a minibatch B'_t independent of B_t (for g'_t)."""
        return self.reg.measure.needs_independent_gradient and not self.reg.split

    def task_started(self, task: int) -> None:
        """Hook for subclasses (analyses): the task's training starts (after any re-init)."""

    def task_ended(self, task: int) -> None:
        """Hook for subclasses (analyses): the task is trained and consolidated."""

    def step(self, optimizer: torch.optim.Optimizer, forward, x: Tensor, y: Tensor,
             independent: tuple[Tensor, Tensor] | None) -> None:
        """One optimiser step on the task loss plus the penalty, with the measure's hooks; with dropout,
        the measure's g_t is taken in one more pass with dropout off (SPEC §2). With bf16, every pass of the
        step runs in one autocast region, so each weight is cast to bf16 once per step, not once per pass."""
        reg = self.reg
        optimizer.zero_grad(set_to_none=True)
        with autocast(self.device, self.config.precision):  # one region per step: each weight is cast once
            if reg.split:
                half = len(y) // 2
                first, second = task_loss(forward, x[:half], y[:half]), task_loss(forward, x[half:], y[half:])
                reg.backward_split(first, second)
                self.check_finite(first + second)
            else:
                loss = task_loss(forward, x, y)
                loss.backward()
                self.check_finite(loss)
                training = (lambda: task_loss(forward, x, y)) if self.dropout else None
                other = None
                if independent is not None:
                    xi, yi = independent
                    other = lambda: task_loss(forward, xi, yi)  # noqa: E731
                if training or other:
                    reg.before_step(task_loss=training, independent_loss=other)
        reg.step(optimizer)  # ∇R, Adam and the measure's statistic: one fused pass on the CPU

    def check_finite(self, loss: Tensor) -> None:
        """Record the step's task loss; Diverged is raised for the first NaN or infinite one (see
        DivergenceGuard: at once on the CPU, within 50 steps on a GPU)."""
        self.guard.record(loss, self.steps_done + 1, self.current_task)  # steps counted from 1

    def consolidate(self, task: int) -> None:
        """End of task: hand the regulariser a sample of the task's training inputs (n of them)."""
        sample = None
        if self.reg.measure.needs_sample:
            n = min(self.config.samples, self.bench.train_size(task))
            generator = torch.Generator().manual_seed(derive_seed(self.config.seed, 5, task))
            index = torch.randperm(self.bench.train_size(task), generator=generator)[:n].to(self.device)
            sample = self.bench.batch(task, index)
        self.reg.end_task(*(sample if sample else ()), forward=task_forward(self.model, task))


def task_loss(forward, x: Tensor, y: Tensor) -> Tensor:
    """The task loss: mean cross-entropy of the logits `forward(x)`."""
    return F.cross_entropy(forward(x), y)


def load_benchmark(config: RunConfig) -> Benchmark:
    """The task sequence `config` asks for (loads, and if need be downloads, its data)."""
    return build_benchmark(config.benchmark, config.tasks, config.seed, config.evaluate_on, config.data_dir,
                           trust_pickle=config.trust_pickle, split_classes=config.split_classes,
                           permute=config.permute)


def run(config: RunConfig, progress: bool = True, bench: Benchmark | None = None,
        checkpoint_path: str | Path | None = None, resume: bool = False) -> dict:
    """Run one configuration end to end; return the results as plain data. Raises Diverged if the
    loss becomes NaN or infinite. `checkpoint_path`/`resume`: see `Trainer.run`."""
    bench = bench or load_benchmark(config)
    trainer = Trainer(config, bench, progress)
    accuracy = trainer.run(checkpoint_path, resume)
    result = {"config": config.to_dict(), "device": describe(trainer.device), "benchmark": bench.describe(),
              "accuracy_matrix": accuracy.tolist(), **metrics.summary(accuracy), "timing": trainer.timing}
    if trainer.proxies is not None:
        result["proxy_losses"] = trainer.proxies.summary()
    if trainer.revisit is not None:
        result["revisit"] = trainer.revisit
    return result
