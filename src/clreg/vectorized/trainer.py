"""Many runs as one: K runs of one benchmark, network and method trained together, exactly as alone.

Each run keeps everything of its own: seed, c, re-init, learning rate, the measure's options, data order,
permutations, initial weights, dropout draws, optimiser, Regularizer, checkpoints and result. Only the
forward and backward passes are shared: the K models' parameters are stacked (`clreg.vectorized.stacked`) and one
batched pass computes every run's loss and gradient (and, where the measure wants them, g_t with dropout off
and g'_t on the independent minibatch). Everything else is each run's own `Trainer` doing what it does
alone (the optimiser step, the penalty, the trajectory statistic, the post-task measure, the evaluation), so
the numbers equal the runs trained one at a time up to the rounding of the batched matrix products.

A run that diverges is recorded as diverged and stops stepping; the others go on.
"""
from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor


from clreg.distributed import collectives as distributed

from clreg import importance
from clreg.benchmarks import Benchmark
from clreg.train.config import RunConfig
from clreg.core.device import autocast, precision_scope, resolve_device
from clreg.vectorized.stacked import RandomStates, StackedNetwork
from clreg.vectorized.step import StackedStep
from clreg.train.steplog import StepLog
from clreg.train.task_search import TaskSearch
from clreg.train.guard import Diverged
from clreg.train.callbacks import Batch
from clreg.train.loop import TaskPlan, Trainer, load_benchmark, result_of, train_steps, train_tasks

NETWORKS = ("mlp", "cifar-cnn")
# settings in which the runs of one vectorised job may differ: none changes a shape; each run keeps its own number
# of steps (epochs, task sizes, the split it is scored on) and its own learning-rate schedule
FREE = ("seed", "c", "reinit", "lr", "evaluate_on", "importance_samples", "penalty", "prior", "decay", "weight_decay",
        "epochs", "task_sizes", "lr_schedule", "lr_gamma", "lr_step_epochs", "lr_min_factor", "momentum",
        *(o.name for o in importance.settings() if o.name != "sos_split"))


def why_not(config: RunConfig) -> str | None:
    """Why `config` cannot train in a vectorised job (None: it can)."""
    if config.network_name not in NETWORKS:
        return f"the {config.network_name} network is not batched (only {', '.join(NETWORKS)})"
    if config.lr_schedule == "plateau" or TaskSearch.from_config(config) is not None:
        return "validation-driven training (plateau schedule, task search) stops each run at its own step"
    if config.proxy_every or config.revisit:
        return "proxy losses and revisiting are per-run analyses"
    if config.sos_split:
        return "sos split takes g and g' from the halves of the training batch"
    if config.penalty_storage != "fp32":
        return "a stacked job keeps its runs' penalties in float32"
    if importance.measure_class(config.method).needs_optimizer:
        return f"{config.method} reads each run's own optimiser state, which a stacked job does not keep"
    return None


def group_key(config: RunConfig) -> str:
    """Equal for runs that can train in one vectorised job: the same settings up to `FREE` ones."""
    shared = {k: v for k, v in config.canonical().items() if k not in FREE}
    shared["device"], shared["data_dir"] = config.device, config.data_dir
    return hashlib.sha256(json.dumps(shared, sort_keys=True, default=str).encode()).hexdigest()


class VectorizedTrainer:
    """Trains the runs of `configs` (one group_key) together; `run()` returns each run's result or Diverged."""

    def __init__(self, configs: Sequence[RunConfig], benches: Sequence[Benchmark] | None = None,
                 logs: Sequence[StepLog] | None = None, stacked_step: bool | None = None):
        """`stacked_step`: one optimiser step for all runs while all step (clreg.vectorized.step; default: off the
        CPU), else each run's own step (bit for bit its step alone)."""
        configs = list(configs)
        if not configs:
            raise ValueError("a vectorised job needs at least one run")
        for config in configs:
            reason = why_not(config)
            if reason:
                raise ValueError(f"run {config.method} c={config.c:g} seed {config.seed} cannot be vectorised: {reason}")
        if len({group_key(c) for c in configs}) > 1:
            raise ValueError("the runs of a vectorised job must share benchmark, network, widths, method, optimiser, "
                             f"batch size and device; they may differ only in {', '.join(FREE)}")
        if distributed.world_size() > 1:
            raise ValueError("a vectorised job runs in one process (not under --nproc)")
        self.device = resolve_device(configs[0].device)
        self.rng = RandomStates(self.device)
        outside = torch.get_rng_state()
        self.members: list[Trainer] = []
        for k, config in enumerate(configs):
            bench = benches[k] if benches else _shared_data(load_benchmark(config), self.members)
            self.members.append(Trainer(config, bench, progress=False, log=logs[k] if logs else None))
            self.rng.capture()  # torch's global state as the run alone would start training with it
        torch.set_rng_state(outside)
        self.net = StackedNetwork([m.model for m in self.members], self.rng)
        first = self.members[0]
        self.net.probe(first.bench.batch(0, torch.arange(2, device=self.device))[0])
        self.failures: dict[int, Diverged] = {}
        reason = StackedStep.why_not(self.members)
        if stacked_step is None:
            stacked_step = self.device.type != "cpu" and reason is None
        elif stacked_step and reason:
            raise ValueError(f"the stacked step cannot serve these runs: {reason}")
        self.stepper = StackedStep(self.members, self.net) if stacked_step else None
        self.stacked = False  # the current steps serve all runs at once
        self.started = [0] * len(self.members)  # the first task each run trains (later ones resume from a checkpoint)

    @property
    def size(self) -> int:
        """K, the runs trained together."""
        return len(self.members)

    def run(self, checkpoint_paths: Sequence[str | Path] | None = None, resume: bool = False) -> list[dict | Diverged]:
        """Train every run on every task; return, per run, its result (as `clreg.train.loop.run`'s) or its Diverged.
        With `checkpoint_paths` (one per run), each run is saved after every task; with `resume`, a run starts
        from its checkpoint where there is one. Evaluation, checkpoints and resuming are each member's Trainer's."""
        paths = list(checkpoint_paths) if checkpoint_paths else [None] * self.size
        for k, (member, path) in enumerate(zip(self.members, paths)):
            with self.rng.of(k):
                self.started[k] = member.start(path if resume else None)
        with precision_scope(self.device, self.members[0].config.precision):
            train_tasks(self.members, self.started, self.train_task, lambda k, task: self._record(k, task, paths[k]),
                        self.failures)
        for member in self.members:
            member.log.close()
        return [self.failures.get(k) or {**result_of(m, m.accuracy), "vectorized": {"runs": self.size, "member": k}}
                for k, m in enumerate(self.members)]

    def _record(self, k: int, task: int, path: str | Path | None) -> None:
        with self.rng.of(k):
            self.members[k].record_task(task, path)

    def train_task(self, task: int, active: list[int]) -> None:
        """Task `task`'s steps for the runs `active`, each for its own number of steps (its epochs, task size and
        split), then each run's importance and consolidation. While every run steps, one stacked step serves them
        all; once one has finished (or diverged), the others take their own steps, from the same optimiser state."""
        plans: dict[int, TaskPlan] = {}
        for k in active:
            with self.rng.of(k):
                plans[k] = self.members[k].open_task(task)
        self.stacked = self.stepper is not None and len(active) == self.size
        if self.stacked:
            self.stepper.begin_task()
        train_steps(self.members, plans, self._step, self.failures)
        for k in active:
            if k not in self.failures:
                with self.rng.of(k):
                    self.members[k].finish_task(task)

    def _step(self, live: list[int], batches: dict[int, Batch]) -> dict[int, tuple[Tensor, Tensor | None]]:
        """The step of every live run: one batched forward and backward, then one stacked step (while every run is
        live) or each run's own step. Returns each run's (loss, R(θ_t) or None); a run that diverged is left out."""
        if self.stacked and len(live) < self.size:  # a run finished or diverged: the others go on alone
            self.stepper.hand_over()
            self.stacked = False
        x, y = self._stack(batches, live, lambda b: (b.x, b.y))
        first = self.members[live[0]]
        task = batches[live[0]].task
        reg = first.reg
        self.net.zero_grad()
        with autocast(self.device, first.config.precision):
            logits = self.net(x, task, dropout=[k in batches and self.members[k].dropout for k in range(self.size)])
            losses = self._losses(logits, y, live)
            torch.stack(list(losses.values())).sum().backward()
            self.net.gradients()
            statistic = reg.measure.trajectory
            task_grads = independent = None
            if statistic and first.dropout and reg.measure.uses_task_gradient:
                task_grads = self._gradients(x, y, task, live)  # g_t with dropout off (docs/algorithms.md §2)
            if statistic and reg.needs_independent_batch:
                independent = self._gradients(*self._stack(batches, live, lambda b: b.independent), task, live)
        stepped = self._stacked_step(live, losses, task_grads, independent) if self.stacked else \
            self._own_steps(live, losses, task_grads, independent)
        return {k: (losses[k].detach(), penalty) for k, penalty in stepped.items()}

    def _losses(self, logits: Tensor, y: Tensor, live: list[int]) -> dict[int, Tensor]:
        """Each live run's mean cross-entropy: one by one as alone (each run's own step: bit for bit), or in one
        batched call with the stacked step (equal to rounding, and K times fewer kernel launches)."""
        if not self.stacked:
            return {k: F.cross_entropy(logits[k], y[k]) for k in live}
        every = F.cross_entropy(logits.flatten(0, 1), y.flatten(), reduction="none").view(y.shape).mean(1)
        return {k: every[k] for k in live}

    def _own_steps(self, live, losses, task_grads, independent) -> dict[int, Tensor | None]:
        """Each run's own step (Trainer.apply_step); returns R(θ_t) or None per run that stepped."""
        stepped = {}
        for k in live:
            member = self.members[k]
            member.reg.set_step_gradients(None if task_grads is None else [g[k] for g in task_grads],
                                          None if independent is None else [g[k] for g in independent])
            try:
                stepped[k] = member.apply_step(member.optimizer, losses[k].detach())
            except Diverged as err:
                self.failures[k] = err
                member.reg.skip_step()
        return stepped

    def _stacked_step(self, live, losses, task_grads, independent) -> dict[int, Tensor | None]:
        """Every run's loss and R(θ_t) checked (R taken where asked), then one step for all
        (clreg.vectorized.step), then every run's parameters checked: the divergence guard of a run alone."""
        stepped = {}
        penalties = self._penalties()
        for k in live:
            member = self.members[k]
            for callback in member.callbacks:
                callback.on_after_backward(member)
            penalty = None if penalties is None or not member.reg.penalty_term.active else penalties[k]
            try:
                member.check_before_step(losses[k].detach(), penalty)
            except Diverged as err:
                self.failures[k] = err  # its slot keeps stepping on zero gradients: nobody reads it any more
                continue
            stepped[k] = member.penalty_if_wanted(None)  # (R alone, where a callback asks for it)
        self.stepper.step(task_grads, independent)
        checks = self._parameter_checks()
        for k in list(stepped):
            try:
                self.members[k].guard.after_step(checks[k])
            except Diverged as err:
                self.failures[k] = err
                del stepped[k]
        return stepped

    @torch.no_grad()
    def _penalties(self) -> Tensor | None:
        """R(θ_t) of every run, [K], from the stacked parameters, centres and 2sP (None: no penalty in force)."""
        stepper = self.stepper
        if not stepper.penalized:
            return None
        quadratic = sum((stepper.precision[n] * (self.net.params[n] - stepper.centre[n]).square()).flatten(1).sum(1)
                        for n in stepper.regularized)
        constants = [m.reg.strength * m.reg.penalty_term.constant for m in self.members]  # 0 for the online penalty
        if not any(constants):
            return 0.5 * quadratic
        return 0.5 * quadratic + torch.tensor(constants, dtype=quadratic.dtype, device=quadratic.device)

    @torch.no_grad()
    def _parameter_checks(self) -> Tensor:
        """Per run, [K]: 0 if all its parameters are finite, else NaN (clreg.train.guard.parameters_check, batched)."""
        return torch.stack([p.detach().flatten(1).sum(1) for p in self.net.params.values()]).mul_(0).sum(0)

    def _stack(self, batches: dict, live: list[int], part) -> tuple[Tensor, Tensor]:
        """Inputs [K, B, ...] and labels [K, B] of the live runs' batches (zeros in the other runs' places)."""
        pairs = {k: part(b) for k, b in batches.items()}
        x0, y0 = pairs[live[0]]
        xs = [pairs[k][0] if k in pairs else torch.zeros_like(x0) for k in range(self.size)]
        ys = [pairs[k][1] if k in pairs else torch.zeros_like(y0) for k in range(self.size)]
        return torch.stack(xs), torch.stack(ys)

    def _gradients(self, x: Tensor, y: Tensor, task: int, live: list[int]) -> list[Tensor]:
        """Stacked, per regularised parameter: run k's slice is ∇ of its task loss on x[k], y[k], dropout off."""
        names = self.members[live[0]].reg.names
        stacked = [self.net.params[n] for n in names]
        logits = self.net(x, task, dropout=[False] * self.size)
        loss = torch.stack(list(self._losses(logits, y, live).values())).sum()
        grads = torch.autograd.grad(loss, stacked, allow_unused=True)
        return [torch.zeros_like(s) if g is None else g for s, g in zip(stacked, grads)]


def _shared_data(bench: Benchmark, members: list[Trainer]) -> Benchmark:
    """`bench` with its data splits replaced by the first run's where they are equal, so that K runs of one
    benchmark hold its data once (the runs differ in permutations and orders, not in the images)."""
    if not members:
        return bench
    other = members[0].bench
    for name in ("train", "evaluation", "validation"):
        mine, theirs = getattr(bench, name, None), getattr(other, name, None)
        if mine is not None and theirs is not None and _same(mine, theirs):
            setattr(bench, name, theirs)
    if hasattr(bench, "tasks") and len(bench.tasks) == len(other.tasks):
        for i, (mine, theirs) in enumerate(zip(bench.tasks, other.tasks)):
            if all(_same(getattr(mine, s), getattr(theirs, s)) for s in ("train", "evaluation", "validation")):
                bench.tasks[i] = theirs
    return bench


def _same(a, b) -> bool:
    if a is None or b is None:
        return a is b
    return a.x.shape == b.x.shape and torch.equal(a.y, b.y.to(a.y.device)) and torch.equal(a.x, b.x.to(a.x.device))


# per run, in float32 copies of the parameters: parameter, gradient, Adam's two moments, Ω, anchor, centre,
# 2P, ∇R, scratch, the measure's start and statistic, θ_t, g_t, g'_t, the stacked gradients of the extra passes,
# and the stacked step's copies of 2P and the centre (clreg.vectorized.step)
COPIES_PER_RUN = 19


def run_bytes(config: RunConfig, parameters: int, activations: int) -> int:
    """Estimated device memory of one run inside a vectorised job: its parameter-sized state and its
    activations (forward and backward of up to three passes per step)."""
    return 4 * (COPIES_PER_RUN * parameters + 3 * 2 * config.batch_size * activations)


def available_bytes(device: torch.device) -> int:
    """Free memory on `device` (the GPU's, or the machine's available RAM for the CPU)."""
    if device.type == "cuda":
        return torch.cuda.mem_get_info(device)[0]
    try:  # Linux: what can be had without swapping, page cache included
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return 8 << 30


def fitting_size(config: RunConfig, bench: Benchmark, limit: int, free: int | None = None) -> int:
    """The largest K <= `limit` whose job fits in 80% of the device's free memory, after the data and the
    per-sample engine's budget. ValueError when not even one run fits, saying what it needs."""
    from clreg.core.device import memory_budget
    from clreg.models.build import build_model

    device = resolve_device(config.device)
    free = available_bytes(device) if free is None else free
    with torch.device("meta"):
        model = build_model(config.network_name, bench.input_shape, config.widths, bench.classes)
    activations = _activation_count(model, bench.input_shape)
    parameters = sum(p.numel() for p in model.parameters())
    per_run = run_bytes(config, parameters, activations)
    fixed = _data_bytes(bench) + min(memory_budget(device), free // 4)
    room = int(0.8 * free) - fixed
    if room < per_run:
        raise ValueError(f"not even one run fits: a run of {config.network_name} {config.widths} with batch "
                         f"{config.batch_size} needs about {per_run / 2**20:.0f} MiB beside {fixed / 2**20:.0f} MiB of data "
                         f"and engine budget, and {resolve_device(config.device)} has {free / 2**20:.0f} MiB free: "
                         "lower the batch size or the widths, or use a device with more memory")
    return max(1, min(limit, room // per_run))


def _activation_count(model, input_shape) -> int:
    """Floats of activation per sample: every layer's output, summed (on the meta device: nothing is computed)."""
    counts = []
    hooks = [m.register_forward_hook(lambda m, i, o: counts.append(o[0].numel() if isinstance(o, Tensor) else 0))
             for m in model.modules() if len(list(m.children())) == 0]
    x = torch.empty((1, *input_shape), device="meta")
    try:
        model(x, 0) if hasattr(model, "heads") else model(x)
    finally:
        for hook in hooks:
            hook.remove()
    return int(sum(counts)) + int(np.prod(input_shape))


def _data_bytes(bench: Benchmark) -> int:
    splits = [getattr(bench, n, None) for n in ("train", "evaluation", "validation")]
    splits += [getattr(t, n) for t in getattr(bench, "tasks", []) for n in ("train", "evaluation", "validation")]
    return sum(s.x.numel() * s.x.element_size() for s in splits if s is not None)
