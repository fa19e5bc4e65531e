"""The continual loop: tasks × steps with a Regularizer, evaluation after each task (SPEC §1, §5)."""
from __future__ import annotations

import time
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

from . import metrics
from .benchmarks import PermutedBenchmark, build_benchmark, derive_seed
from .config import RunConfig
from .models import MLP, glorot_init
from .proxy import ProxyLog
from .regularizer import Regularizer


def index_stream(size: int, batch_size: int, generator: torch.Generator) -> Iterator[Tensor]:
    """Endless minibatch indices: consecutive shuffles of range(size), cut into batches."""
    buffer = torch.empty(0, dtype=torch.long)
    while True:
        while len(buffer) < batch_size:
            buffer = torch.cat([buffer, torch.randperm(size, generator=generator)])
        yield buffer[:batch_size]
        buffer = buffer[batch_size:]


def make_optimizer(model: nn.Module, lr: float) -> torch.optim.Optimizer:
    """Adam, β = (0.9, 0.999), ε = 1e-8; the fused kernel (one pass per step) where available."""
    return torch.optim.Adam(model.parameters(), lr=lr, betas=(0.9, 0.999), eps=1e-8, fused=True)


@torch.no_grad()
def evaluate(model: nn.Module, bench: PermutedBenchmark, task: int) -> float:
    """Accuracy of `model` on the evaluation split of `task`."""
    was_training = model.training
    model.eval()
    correct = total = 0
    for x, y in bench.evaluation_batches(task):
        correct += int((model(x).argmax(1) == y).sum())
        total += len(y)
    model.train(was_training)
    return correct / total


class Trainer:
    """Trains one model on a task sequence with one Regularizer, following the paper's protocol."""

    def __init__(self, config: RunConfig, bench: PermutedBenchmark, progress: bool = True):
        self.config, self.bench, self.progress = config, bench, progress
        torch.manual_seed(config.seed)
        self.init_generator = torch.Generator().manual_seed(derive_seed(config.seed, 2))
        self.model = MLP(bench.in_features, config.hidden, bench.num_classes)
        self.model.reset_parameters(self.init_generator)
        self.reg = Regularizer(self.model, config.method, config.c, penalty=config.penalty, prior=config.prior,
                               decay=config.decay, keep_tasks=config.proxy_every > 0, **config.measure_options())
        self.timing = {"train_seconds": 0.0, "importance_seconds": 0.0, "evaluation_seconds": 0.0}
        self.proxies = ProxyLog(self.model, self.reg, bench, config.proxy_samples) if config.proxy_every else None
        self.steps_done = 0
        self.revisit: dict | None = None

    def run(self) -> np.ndarray:
        """Train on every task; return the accuracy matrix A[k, j]."""
        k_total = self.bench.num_tasks
        accuracy = np.zeros((k_total, k_total))
        for task in range(k_total):
            self.train_task(task)
            start = time.perf_counter()
            accuracy[task] = [evaluate(self.model, self.bench, j) for j in range(k_total)]
            self.timing["evaluation_seconds"] += time.perf_counter() - start
        if self.config.revisit:
            self.revisit_first_task(accuracy[-1].tolist())
        return accuracy

    def revisit_first_task(self, before: list[float]) -> None:
        """Drop task 1's penalty term (debiased) and learn task 1 again as if new; evaluate all tasks.
        `before` is the accuracy on every task after the last one (the accuracy matrix's last row)."""
        self.reg.drop_task(0)
        self.train_task(0, reinit=False)
        after = [evaluate(self.model, self.bench, j) for j in range(self.bench.num_tasks)]
        self.revisit = {"task": 0, "accuracy_before": before, "accuracy_after": after}

    def steps_per_task(self) -> int:
        """Epochs × ⌊epoch size / b⌋ steps (at least one per epoch)."""
        return self.config.epochs * max(1, self.bench.epoch_size // self.config.batch_size)

    def train_task(self, task: int, reinit: bool = True) -> None:
        """The steps of one task, then the importance measurement and consolidation."""
        cfg, reg = self.config, self.reg
        if task > 0 and cfg.reinit and reinit:
            glorot_init(self.model, self.model.bias_init, self.init_generator, names=set(reg.names))
            reg.begin_task()
        optimizer = make_optimizer(self.model, cfg.learning_rate)
        size = self.bench.train_size(task)
        batches = index_stream(size, cfg.batch_size, torch.Generator().manual_seed(derive_seed(cfg.seed, 3, task)))
        independent = None
        if reg.measure.needs_independent_gradient and not reg.split:
            independent = index_stream(size, cfg.batch_size, torch.Generator().manual_seed(derive_seed(cfg.seed, 4, task)))
        start = time.perf_counter()
        steps = range(self.steps_per_task())
        for _ in tqdm(steps, desc=f"task {task + 1}/{self.bench.num_tasks}", disable=not self.progress, leave=False):
            x, y = self.bench.batch(task, next(batches))
            self.step(optimizer, x, y, None if independent is None else self.bench.batch(task, next(independent)))
            self.steps_done += 1
            if self.proxies is not None and self.steps_done % cfg.proxy_every == 0:
                self.proxies.log(self.steps_done, task)
        self.timing["train_seconds"] += time.perf_counter() - start
        start = time.perf_counter()
        self.consolidate(task)
        self.timing["importance_seconds"] += time.perf_counter() - start
        if self.proxies is not None and reg.measure.regularizes:
            self.proxies.task_end(task)

    def step(self, optimizer: torch.optim.Optimizer, x: Tensor, y: Tensor,
             independent: tuple[Tensor, Tensor] | None) -> None:
        """One optimiser step on the task loss plus the penalty, with the measure's hooks."""
        model, reg = self.model, self.reg
        optimizer.zero_grad(set_to_none=True)
        if reg.split:
            half = len(y) // 2
            reg.backward_split(F.cross_entropy(model(x[:half]), y[:half]),
                               F.cross_entropy(model(x[half:]), y[half:]))
        else:
            F.cross_entropy(model(x), y).backward()
            if independent is not None:
                xi, yi = independent
                reg.before_step(independent_loss=lambda: F.cross_entropy(model(xi), yi))
        reg.step(optimizer)  # ∇R, Adam and the measure's statistic: one fused pass

    def consolidate(self, task: int) -> None:
        """End of task: hand the regulariser a sample of the task's training inputs (n of them)."""
        sample = None
        if self.reg.measure.needs_sample:
            n = min(self.config.samples, self.bench.train_size(task))
            generator = torch.Generator().manual_seed(derive_seed(self.config.seed, 5, task))
            index = torch.randperm(self.bench.train_size(task), generator=generator)[:n]
            sample = self.bench.batch(task, index)
        self.reg.end_task(*(sample if sample else ()))


def run(config: RunConfig, progress: bool = True, bench: PermutedBenchmark | None = None) -> dict:
    """Run one configuration end to end; return the results as plain data."""
    bench = bench or build_benchmark(config.benchmark, config.tasks, config.seed, config.evaluate_on,
                                     config.data_dir)
    trainer = Trainer(config, bench, progress)
    accuracy = trainer.run()
    result = {"config": config.to_dict(), "benchmark": bench.describe(),
              "accuracy_matrix": accuracy.tolist(), **metrics.summary(accuracy), "timing": trainer.timing}
    if trainer.proxies is not None:
        result["proxy_losses"] = trainer.proxies.summary()
    if trainer.revisit is not None:
        result["revisit"] = trainer.revisit
    return result
