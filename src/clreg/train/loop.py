"""The continual loop: tasks × steps with a Regularizer, evaluation after each task (docs/algorithms.md §1, §5)."""
from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor

from clreg.train import checkpoint

from clreg.distributed import collectives as distributed

from clreg.train import metrics
from clreg.benchmarks import Benchmark, build_benchmark, derive_seed
from clreg.train.config import RunConfig
from clreg.core.device import (autocast, check_combination, describe, precision_scope, resolve_device, synchronize,
                     warn_if_slow)
from clreg.models.build import build_model, reinitialize, task_forward
from clreg.train.sizes import check_run_size
from clreg.core.options import SettingError
from clreg.train.optim import make_optimizer, make_schedule
from clreg.train.evaluation import evaluate
from clreg.train.guard import Diverged, DivergenceGuard
from clreg.train.plateau import Plateau
from clreg.train.callbacks import Batch, Callback, Step
from clreg.train.progress import ProgressBar
from clreg.train.proxy import ProxyLog
from clreg.train.steplog import StepLog
from clreg.train.task_search import TaskSearch
from clreg.regularizer import Regularizer, has_active_dropout


def index_stream(size: int, batch_size: int, generator: torch.Generator, drop_last: bool = False,
                 device: torch.device | str = "cpu") -> Iterator[Tensor]:
    """Endless minibatch indices from consecutive shuffles of range(size): cut across shuffles, or with
    `drop_last` ⌊size/b⌋ full batches per shuffle (epoch) and the rest dropped. Shuffles are drawn on the
    CPU (the same order on every device) and moved to `device` once each."""
    if drop_last and size < batch_size:
        raise ValueError(f"a task has {size} training examples, fewer than one batch of {batch_size}")
    if drop_last:
        while True:
            shuffle = torch.randperm(size, generator=generator).to(device)
            for start in range(0, size - batch_size + 1, batch_size):
                yield shuffle[start:start + batch_size]
    pieces: list[Tensor] = []  # the shuffles drawn and not yet used up; the first from `start` on
    start = held = 0  # held: indices left in `pieces`
    while True:
        while held < batch_size:  # each shuffle drawn when a batch reaches into it, so the cost is linear
            pieces.append(torch.randperm(size, generator=generator).to(device))
            held += size
        end = start + batch_size
        if end <= size:
            batch = pieces[0][start:end]
        else:
            whole, rest = divmod(end, size)
            batch = torch.cat([pieces[0][start:], *pieces[1:whole], pieces[whole][:rest]] if rest else
                              [pieces[0][start:], *pieces[1:whole]])
        used, start = divmod(end, size)
        del pieces[:used]
        held -= batch_size
        yield batch


@dataclass
class TaskPlan:
    """One task's training as `Trainer.open_task` sets it up."""

    task: int
    steps: int
    optimizer: torch.optim.Optimizer
    schedule: object  # clreg.train.optim.Schedule, or None
    batches: Iterator[Tensor]  # minibatch indices
    independent: Iterator[Tensor] | None  # indices of the independent minibatches, where wanted
    forward: Callable[[Tensor], Tensor]  # inputs → the task's logits


class Trainer:
    """Trains one model on a task sequence with one Regularizer, following the paper's protocol."""

    def __init__(self, config: RunConfig, bench: Benchmark, progress: bool = True,
                 callbacks: Sequence[Callback] = (), log: StepLog | None = None):
        self.device = resolve_device(config.device)
        check_combination(self.device, config.precision)
        warn_if_slow(self.device, config.precision)
        self.config, self.bench, self.progress = config, bench.to(self.device), progress
        torch.manual_seed(config.seed)
        self.init_generator = torch.Generator().manual_seed(derive_seed(config.seed, 2))
        self.model = build_model(config.network_name, bench.input_shape, config.widths, bench.classes,
                                 self.init_generator).to(self.device)
        self.guard = DivergenceGuard(self.device)
        self.watched = list(self.model.parameters())  # the parameters the guard checks after every step
        self.reg = Regularizer(self.model, config.method, config.c, heads=("heads",) if bench.multi_head else (),
                               penalty=config.penalty, prior=config.prior, decay=config.decay,
                               keep_tasks=config.proxy_every > 0, keep_importance=True, storage=config.penalty_storage,
                               **config.measure_options())
        self.dropout = has_active_dropout(self.model)
        self.ranks = distributed.world_size()  # > 1: one of `clreg run --nproc` processes (clreg.train.nproc)
        if self.ranks > 1 and self.reg.split:
            raise ValueError("sos with split=True takes g and g' from the two halves of each batch, which are "
                             "spread over the processes under --nproc: use split=False")
        self.timing = {"train_seconds": 0.0, "importance_seconds": 0.0, "evaluation_seconds": 0.0}
        self.proxies = ProxyLog(config.proxy_samples, config.proxy_every) if config.proxy_every else None
        self.plateau = Plateau(config.lr_gamma, config.lr_patience, config.stop_patience) \
            if config.lr_schedule == "plateau" else None
        self.search = TaskSearch.from_config(config)  # De Lange et al.'s per-task search, where asked for
        self.log = log or StepLog()  # the step log behind the result's loss curve (and any log files)
        self.callbacks = [*([ProgressBar()] if progress else []), self.log,
                          *([self.proxies] if self.proxies else []), *([self.plateau] if self.plateau else []),
                          *callbacks]
        self.optimizer: torch.optim.Optimizer | None = None  # the current task's
        self.stop_task = False  # a callback ends the current task's steps early by setting this
        self.steps_done = 0
        self.current_task = 0
        self.revisit: dict | None = None
        self.accuracy: np.ndarray | None = None  # A[k, j] of the run so far, set by run()
        for callback in self.callbacks:
            callback.on_run_start(self)
        if self.search is not None:
            self.search.check(self)

    def run(self, checkpoint_path: str | Path | None = None, resume: bool = False) -> np.ndarray:
        """Train on every task; return the accuracy matrix A[k, j]. With `checkpoint_path`, the state is
        saved after every task; with `resume` too, a run starts from that checkpoint when it exists."""
        first = self.start(checkpoint_path if resume else None)
        with precision_scope(self.device, self.config.precision):
            train_tasks([self], [first], lambda task, active: self.search.train(self, task) if self.search is not None
                        else self.train_task(task), lambda k, task: self.record_task(task, checkpoint_path))
        if self.config.revisit:
            self.revisit_first_task(self.accuracy[-1].tolist())
        return self.accuracy

    def start(self, resume_from: str | Path | None = None) -> int:
        """Before the first task: an empty accuracy matrix, filled from the checkpoint at `resume_from` where it
        exists; returns the first task to train."""
        k_total = self.bench.num_tasks
        self.accuracy = np.zeros((k_total, k_total))  # rows filled as tasks finish (callbacks read it)
        if resume_from is not None and Path(resume_from).exists():
            return self.load_state_dict(checkpoint.load(resume_from, self.config.canonical()), self.accuracy)
        return 0

    def record_task(self, task: int, checkpoint_path: str | Path | None = None) -> None:
        """After task `task`: its row of the accuracy matrix, on_evaluation, and the checkpoint where asked."""
        start = time.perf_counter()
        self.accuracy[task] = [evaluate(self.model, self.bench, j) for j in range(self.bench.num_tasks)]
        self.timing["evaluation_seconds"] += time.perf_counter() - start
        for callback in self.callbacks:
            callback.on_evaluation(self, task, self.accuracy[task].tolist())
        if checkpoint_path is not None and distributed.rank() == 0:  # (every process holds the same state)
            checkpoint.save(checkpoint_path, self.state_dict(self.accuracy[:task + 1]))

    def state_dict(self, accuracy: np.ndarray) -> dict:
        """Everything a resumed run needs after the tasks whose accuracy rows are given: model, penalty,
        random generators, timings, and the rows themselves (tensors and plain data only)."""
        return {"config": self.config.canonical(), "tasks_done": len(accuracy), "accuracy": accuracy.tolist(),
                **self.training_state(), "timing": dict(self.timing), "steps_done": self.steps_done,
                "callbacks": self._callback_states(),
                "search": self.search.state_dict() if self.search is not None else None}

    def training_state(self) -> dict:
        """What training a task changes and a task's training starts from: the model, the regulariser and the
        random generators (live tensors: copy them to keep them)."""
        return {"model": self.model.state_dict(), "regularizer": self.reg.state_dict(),
                "init_generator": self.init_generator.get_state(), "torch_rng": torch.get_rng_state(),
                "cuda_rng": torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None}

    def load_training_state(self, state: dict) -> None:
        """Restore a `training_state`."""
        self.model.load_state_dict(state["model"])
        self.reg.load_state_dict(state["regularizer"])
        self.init_generator.set_state(state["init_generator"])
        torch.set_rng_state(state["torch_rng"])
        if self.device.type == "cuda" and state.get("cuda_rng") is not None:  # dropout draws on the GPU
            torch.cuda.set_rng_state(state["cuda_rng"], self.device)

    def _callback_keys(self) -> list[str]:
        """Each callback's name in checkpoints: its class name (name#2, ... for repeats)."""
        names = [type(callback).__name__ for callback in self.callbacks]
        return [name if names[:i].count(name) == 0 else f"{name}#{names[:i].count(name) + 1}"
                for i, name in enumerate(names)]

    def _callback_states(self) -> dict:
        """Each callback's state by `_callback_keys`; empty states are left out."""
        return {key: state for key, callback in zip(self._callback_keys(), self.callbacks)
                if (state := callback.state_dict())}

    def load_state_dict(self, state: dict, accuracy: np.ndarray) -> int:
        """Restore a `state_dict`, fill the finished rows of `accuracy`; return the next task to train."""
        done = int(state["tasks_done"])
        accuracy[:done] = np.asarray(state["accuracy"])
        self.load_training_state(state)
        self.timing.update(state["timing"])
        self.steps_done = int(state["steps_done"])
        saved = state.get("callbacks", {})
        for key, callback in zip(self._callback_keys(), self.callbacks):
            if key in saved:  # a callback that was not in the saved run starts afresh
                callback.load_state_dict(saved[key])
        if self.search is not None and state.get("search") is not None:
            self.search.load_state_dict(state["search"])
        return done

    def revisit_first_task(self, before: list[float]) -> None:
        """Drop task 1's penalty term (debiased) and learn task 1 again as if new; evaluate all tasks.
        `before` is the accuracy on every task after the last one (the accuracy matrix's last row)."""
        self.reg.drop_task(0)
        self.train_task(0, reinit=False)
        after = [evaluate(self.model, self.bench, j) for j in range(self.bench.num_tasks)]
        self.revisit = {"task": 0, "accuracy_before": before, "accuracy_after": after}

    def steps_per_task(self, task: int) -> int:
        """The steps of `task` in this run (see steps_for)."""
        return self.steps_for(self.config, self.bench, task)

    def steps_per_epoch(self, task: int) -> int:
        """⌊epoch size / b⌋ steps, at least one."""
        return steps_per_epoch(self.bench, task, self.config.batch_size)

    @staticmethod
    def steps_for(config: RunConfig, bench: Benchmark, task: int) -> int:
        """Epochs × steps per epoch; with equal_iter, task t's epochs are multiplied by round(n_1 / n_t), so
        that every task gets about as many steps as the first (10× for tasks 2–6 of split-cifar10-100, as in
        docs/algorithms.md §5)."""
        epochs = config.epochs
        if config.equal_iter:
            epochs *= max(1, round(bench.epoch_size(0) / bench.epoch_size(task)))
        return epochs * steps_per_epoch(bench, task, config.batch_size)

    def train_task(self, task: int, reinit: bool = True) -> None:
        """The steps of one task, then the importance measurement and consolidation."""
        self.fit_task(task, reinit)
        self.finish_task(task)

    def fit_task(self, task: int, reinit: bool = True, lr: float | None = None) -> None:
        """The steps of one task (at learning rate `lr`, default the run's), from re-init to on_train_end."""
        plan = self.open_task(task, reinit, lr)
        train_steps([self], {0: plan}, lambda live, batches: {0: self.step(plan.optimizer, plan.forward, batches[0].x,
                                                                           batches[0].y, batches[0].independent)})

    def open_task(self, task: int, reinit: bool = True, lr: float | None = None) -> "TaskPlan":
        """A task's start: re-init, on_task_start, a fresh optimiser and schedule, the minibatch streams."""
        cfg, reg = self.config, self.reg
        if task > 0 and cfg.reinit and reinit:
            reinitialize(self.model, set(reg.names), self.init_generator)
            reg.begin_task()
        self.current_task = task
        steps = self.steps_per_task(task)
        for callback in self.callbacks:
            callback.on_task_start(self, task, steps)
        settings = cfg.optimizer_settings()
        optimizer = self.optimizer = make_optimizer(self.model, lr or cfg.learning_rate, settings)
        self.stop_task = False
        schedule = make_schedule(optimizer, settings, steps, self.steps_per_epoch(task))
        size, drop_last = self.bench.train_size(task), self.bench.drop_last
        batches = index_stream(size, cfg.batch_size, torch.Generator().manual_seed(derive_seed(cfg.seed, 3, task)),
                               drop_last, self.device)
        independent = None
        if self.wants_independent_batches():
            independent = index_stream(size, cfg.batch_size,
                                       torch.Generator().manual_seed(derive_seed(cfg.seed, 4, task)), drop_last,
                                       self.device)
        return TaskPlan(task, steps, optimizer, schedule, batches, independent, task_forward(self.model, task))

    def next_batch(self, plan: "TaskPlan", task_step: int) -> Batch:
        """Step `task_step`'s minibatch (and independent minibatch), shown to the callbacks."""
        x, y = self.bench.batch(plan.task, next(plan.batches))
        other = None if plan.independent is None else self.bench.batch(plan.task, next(plan.independent))
        batch = Batch(plan.task, task_step, x, y, other, plan.forward)
        for callback in self.callbacks:
            callback.on_before_step(self, batch)
        return batch

    def after_step(self, plan: "TaskPlan", batch: Batch, loss: Tensor, penalty: Tensor | None) -> None:
        """After the optimiser step: the schedule, the step count and on_step."""
        step_lr = plan.optimizer.param_groups[0]["lr"]
        if plan.schedule is not None:
            plan.schedule.step()
        self.steps_done += 1
        done = Step(self.steps_done, plan.task, batch.task_step + 1, loss, penalty, step_lr)
        for callback in self.callbacks:
            callback.on_step(self, done)

    def close_task(self, task: int, start: float) -> None:
        """After a task's last step: the divergence check, the training time since `start`, on_train_end."""
        self.guard.check()
        synchronize(self.device)
        self.timing["train_seconds"] += time.perf_counter() - start
        for callback in self.callbacks:
            callback.on_train_end(self, task)

    def finish_task(self, task: int) -> None:
        """After a task's steps: its importance measured and consolidated, then on_task_end."""
        start = time.perf_counter()
        self.consolidate(task)
        self.timing["importance_seconds"] += time.perf_counter() - start
        for callback in self.callbacks:
            callback.on_task_end(self, task)

    def wants_independent_batches(self) -> bool:
        """True if each step needs a minibatch B'_t independent of B_t (for g'_t, or for a callback)."""
        return self.reg.needs_independent_batch or \
            any(callback.needs_independent_batch for callback in self.callbacks)

    def step(self, optimizer: torch.optim.Optimizer, forward, x: Tensor, y: Tensor,
             independent: tuple[Tensor, Tensor] | None) -> tuple[Tensor, Tensor | None]:
        """One optimiser step on the task loss plus the penalty, with the measure's hooks; with dropout,
        the measure's g_t is taken in one more pass with dropout off (docs/algorithms.md §2). With bf16, every pass of the
        step runs in one autocast region, so each weight is cast to bf16 once per step, not once per pass.
        Returns the step's task loss and, where a callback asked for it, the penalty R(θ_t)."""
        reg = self.reg
        optimizer.zero_grad(set_to_none=True)
        whole = len(y)
        x, y = self.share(x, y)
        if independent is not None:
            independent = self.share(*independent)
        with autocast(self.device, self.config.precision):  # one region per step: each weight is cast once
            if reg.split:
                half = len(y) // 2
                first, second = task_loss(forward, x[:half], y[:half]), task_loss(forward, x[half:], y[half:])
                reg.backward_split(first, second)
                loss = (first.detach() + second.detach()) / 2
            else:
                loss = self.shared_loss(forward, x, y, whole)
                loss.backward()
                loss = loss.detach()
                training = (lambda: self.shared_loss(forward, x, y, whole)) if self.dropout else None
                other = None
                if independent is not None and reg.measure.needs_independent_gradient:
                    xi, yi = independent
                    other = lambda: self.shared_loss(forward, xi, yi, whole)  # noqa: E731
                if training or other:
                    reg.before_step(task_loss=training, independent_loss=other)
        if self.ranks > 1:
            distributed.average_([loss, *(p.grad for p in self.model.parameters() if p.grad is not None)])
        return loss, self.apply_step(optimizer, loss)

    def apply_step(self, optimizer: torch.optim.Optimizer, loss: Tensor) -> Tensor | None:
        """With the gradients in place: the step's loss and R(θ_t) checked, then ∇R, the optimiser and the
        measure's statistic, then the parameters checked. Returns R(θ_t) where a callback asks for it, else None."""
        for callback in self.callbacks:
            callback.on_after_backward(self)
        penalty = self.penalty_in_force()
        self.check_before_step(loss, penalty)
        wanted = self.penalty_if_wanted(penalty)
        self.reg.step(optimizer)  # ∇R, Adam and the measure's statistic: one fused pass on the CPU
        self.guard.after_step(self.watched)
        return wanted

    def penalty_in_force(self) -> Tensor | None:
        """R(θ_t) while the penalty is in force (the divergence guard watches it), else None."""
        if not self.reg.penalty_term.active:
            return None
        with torch.no_grad():
            return self.reg.penalty().detach()  # evaluating R changes nothing (issue 13)

    def penalty_if_wanted(self, penalty: Tensor | None) -> Tensor | None:
        """R(θ_t) where a callback asks for it at the coming step, else None: `penalty` where taken already
        (`penalty_in_force`), else R evaluated now."""
        if not any(callback.wants_penalty(self.steps_done + 1) for callback in self.callbacks):
            return None
        return penalty if penalty is not None else self.reg.penalty().detach()

    def shared_loss(self, forward, x: Tensor, y: Tensor, whole: int) -> Tensor:
        """The task loss of this process's share of a batch of `whole` examples, weighted so that its average
        across processes (as Regularizer.gradient and the step's gradient take it) is the whole batch's mean."""
        loss = task_loss(forward, x, y)
        return loss if self.ranks == 1 else loss * (self.ranks * len(y) / whole)

    def share(self, x: Tensor, y: Tensor) -> tuple[Tensor, Tensor]:
        """This process's contiguous share of a batch (all of it in one process)."""
        if self.ranks == 1:
            return x, y
        mine = distributed.share(len(y))
        return x[mine], y[mine]

    def check_before_step(self, loss: Tensor, penalty: Tensor | None) -> None:
        """Record the coming step's task loss and R(θ_t) (None: not in force); Diverged is raised for the first
        NaN or infinite one, or the first step after which the parameters are not finite (DivergenceGuard: at
        once on the CPU, within 50 steps on a GPU)."""
        self.guard.before_step(loss, penalty, self.steps_done + 1, self.current_task)  # steps counted from 1

    def consolidate(self, task: int) -> None:
        """End of task: hand the regulariser a sample of the task's training inputs (n of them)."""
        sample = None
        if self.reg.measure.needs_sample:
            n = min(self.config.samples, self.bench.train_size(task))
            generator = torch.Generator().manual_seed(derive_seed(self.config.seed, 5, task))
            index = torch.randperm(self.bench.train_size(task), generator=generator)[:n].to(self.device)
            sample = self.share(*self.bench.batch(task, index))  # across processes: summed over the ranks' shares
        self.reg.end_task(*(sample if sample else ()), forward=task_forward(self.model, task))


StepAll = Callable[[list[int], dict[int, Batch]], dict[int, tuple[Tensor, Tensor | None]]]


def train_tasks(members: Sequence[Trainer], first: Sequence[int], train_task: Callable[[int, list[int]], None],
                record: Callable[[int, int], None], failures: dict[int, Diverged] | None = None) -> None:
    """clreg's one task loop, for one run or K: from the earliest member's first task (members resumed from later
    checkpoints join at theirs), `train_task(task, active)` trains the active members, then `record(k, task)`
    evaluates and checkpoints each one that has not failed."""
    for task in range(min(first), members[0].bench.num_tasks):
        active = [k for k in range(len(members)) if (failures is None or k not in failures) and first[k] <= task]
        train_task(task, active)
        for k in active:
            if failures is None or k not in failures:
                record(k, task)


def train_steps(members: Sequence[Trainer], plans: dict[int, TaskPlan], step: StepAll,
                failures: dict[int, Diverged] | None = None) -> None:
    """The steps of one task: clreg's one step loop, for one run (`members` a list of one) or K runs trained
    together (clreg.vectorized). Member k takes its own plan's steps (its epochs, task size and split) until a
    callback stops it (`stop_task`) or it fails; `step(live, batches)` takes the step of every live member,
    from the gradients to the optimiser, and returns each one's (task loss, R(θ_t) or None); a member it leaves
    out has failed, its Diverged in `failures`. Then each member's task closes (the divergence check,
    on_train_end). Alone (`failures` None) a Diverged ends the run; together it ends the member."""
    start = time.perf_counter()
    for task_step in range(max((plan.steps for plan in plans.values()), default=0)):
        live = [k for k, plan in plans.items() if (failures is None or k not in failures)
                and not members[k].stop_task and task_step < plan.steps]
        if not live:
            break
        batches = {k: members[k].next_batch(plans[k], task_step) for k in live}
        for k, (loss, penalty) in step(live, batches).items():
            members[k].after_step(plans[k], batches[k], loss, penalty)
    for k, plan in plans.items():
        if failures is None:
            members[k].close_task(plan.task, start)
        elif k not in failures:
            try:
                members[k].close_task(plan.task, start)
            except Diverged as err:
                failures[k] = err


def task_loss(forward, x: Tensor, y: Tensor) -> Tensor:
    """The task loss: mean cross-entropy of the logits `forward(x)`."""
    return F.cross_entropy(forward(x), y)


def steps_per_epoch(bench: Benchmark, task: int, batch_size: int) -> int:
    """Steps in one epoch of `task`: ⌊epoch size / b⌋, at least one."""
    return max(1, bench.epoch_size(task) // batch_size)


def check_fits(bench: Benchmark, config: RunConfig) -> None:
    """Raise ValueError if a task has fewer training examples than one batch (where epochs are whole batches,
    split benchmarks, such a task could not take a single step; in a stream of shuffles, a batch would hold
    examples twice), or if the run cannot fit into the device's memory (clreg.train.sizes)."""
    small = [(t, bench.train_size(t)) for t in range(bench.num_tasks) if bench.train_size(t) < config.batch_size]
    if small:
        task, size = small[0]
        raise SettingError(f"task {task + 1} of {bench.name} has {size} training examples, fewer than one batch of "
                           f"{config.batch_size}: lower {{0}} to at most {min(n for _, n in small)} (or give the "
                           "tasks more data)", "batch_size")
    check_run_size(config, bench)


def load_benchmark(config: RunConfig) -> Benchmark:
    """The task sequence `config` asks for (loads, and if need be downloads, its data)."""
    return build_benchmark(config.benchmark, config.tasks, config.seed, config.evaluate_on, config.data_dir,
                           trust_pickle=config.trust_pickle, split_classes=config.split_classes,
                           permute=config.permute, task_sizes=config.task_sizes)


def run(config: RunConfig, progress: bool = True, bench: Benchmark | None = None,
        checkpoint_path: str | Path | None = None, resume: bool = False, callbacks: Sequence[Callback] = (),
        log: StepLog | None = None) -> dict:
    """Run one configuration end to end; return the results as plain data. Raises Diverged if the
    loss becomes NaN or infinite. `checkpoint_path`/`resume`: see `Trainer.run`; `log`: the step log
    (with its sinks: a JSON-lines file, TensorBoard), closed at the end."""
    bench = bench or load_benchmark(config)
    log = log or StepLog()
    trainer = Trainer(config, bench, progress, callbacks, log)
    try:
        accuracy = trainer.run(checkpoint_path, resume)
    finally:
        log.close()
    return result_of(trainer, accuracy)


def result_of(trainer: Trainer, accuracy: np.ndarray) -> dict:
    """A finished run's results as plain data: its config, device, benchmark, accuracy matrix and summary,
    chance level and whether the run did not learn (average accuracy below chance + metrics.LEARNING_MARGIN),
    timings, loss curve and whatever its optional parts recorded."""
    config, bench = trainer.config, trainer.bench
    summary = metrics.summary(accuracy)
    chance = metrics.chance(bench.classes, bench.num_tasks)
    result = {"config": config.to_dict(), "device": describe(trainer.device), "benchmark": bench.describe(),
              "accuracy_matrix": accuracy.tolist(), **summary, "timing": trainer.timing,
              "loss_curve": trainer.log.curve(), "chance": chance,
              "did_not_learn": metrics.did_not_learn(summary["average_accuracy"], chance)}
    if trainer.proxies is not None:
        result["proxy_losses"] = trainer.proxies.summary()
    if trainer.revisit is not None:
        result["revisit"] = trainer.revisit
    if trainer.plateau is not None:
        result["plateau"] = trainer.plateau.history
    if trainer.search is not None:
        result["search"] = trainer.search.history
    return result
