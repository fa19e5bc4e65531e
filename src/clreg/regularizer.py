"""The library's entry point: a regulariser that adds a continual-learning penalty to any model.

    reg = Regularizer(model, "si", c=0.2)
    for x, y in task_data:
        optimizer.zero_grad()
        loss = F.cross_entropy(model(x), y) + reg.penalty()
        loss.backward()
        optimizer.step()
        reg.after_step()
    reg.end_task(sample_inputs)          # measure ω, Ω ← Ω + ω, θ* ← θ
"""
from __future__ import annotations

import inspect
import warnings
from contextlib import contextmanager
from typing import Callable, Iterable, Iterator

import torch
from torch import Tensor, nn

from clreg.distributed import collectives as distributed

from clreg.core import fused, optimizers, shards, step as step_backends

from clreg import importance
from clreg.core.device import single_device
from clreg.importance import ImportanceMeasure, TaskSample, inputs as model_inputs
from clreg.importance.inputs import Inputs
from clreg.core.penalty import QuadraticPenalty

ParamFilter = Callable[[str, nn.Parameter], bool]


def select_shared(model: nn.Module, heads: Iterable[str] = (), shared: ParamFilter | None = None
                  ) -> tuple[list[str], list[nn.Parameter]]:
    """Names and parameters that are regularised: trainable, outside the `heads` prefixes, and
    accepted by the optional `shared(name, param)` filter."""
    heads = tuple(heads)
    named = [(n, p) for n, p in model.named_parameters() if p.requires_grad]
    for prefix in heads:
        if not any(n == prefix or n.startswith(prefix + ".") for n, _ in named):
            raise ValueError(f"head prefix {prefix!r} matches no parameter of the model; "
                             f"parameters are: {', '.join(n for n, _ in named)}")
    chosen = [(n, p) for n, p in named
              if not any(n == h or n.startswith(h + ".") for h in heads) and (shared is None or shared(n, p))]
    if not chosen:
        raise ValueError("no parameter is left to regularise (check `heads` and `shared`)")
    return [n for n, _ in chosen], [p for _, p in chosen]


def has_active_dropout(model: nn.Module) -> bool:
    """True if a dropout module with p > 0 would be active in the current mode."""
    return model.training and any(isinstance(m, nn.modules.dropout._DropoutNd) and m.p > 0
                                  for m in model.modules())


class Regularizer:
    """One quadratic penalty R(θ) = c Σ Ω (θ − θ*)² plus one importance measure, for any nn.Module.

    Use it in your own loop: add `penalty()` to the loss (once per step; or, faster, call
    `add_penalty_gradient()` after the task loss's backward), call `after_step()` after each
    `optimizer.step()`, and `end_task(inputs)` when a task ends. Fastest: backpropagate the task
    loss alone and call `step(optimizer)` in place of the optimiser's step (one fused native pass for Adam
    on the CPU, foreach kernels on any other device). All state lives on the parameters' device, in their
    dtype, except that `storage="bf16"` (or torch.bfloat16) keeps Ω and θ* in bfloat16 (online penalty: half
    their memory; the step, native kernel included, still computes in the parameters' dtype). Measures that need a
    gradient on an independent minibatch (siu, sib, sos with α ≠ 0) also need `before_step(independent_loss=...)`
    before the optimiser step; `sos` with split=True instead uses `backward_split(loss_a, loss_b)`.
    `keep_importance=True` keeps the last task's ω as `last_importance` (a copy of the parameters' size;
    `end_task` returns it either way).
    """

    def __init__(self, model: nn.Module, method: str | ImportanceMeasure = "si", c: float = 1.0, *,
                 heads: Iterable[str] = (), shared: ParamFilter | None = None, decay: float = 1.0,
                 prior: float = 0.0, penalty: str = "online", keep_tasks: bool = False,
                 memory_budget: int | None = None, process_group=None, step_backend: str | None = None,
                 keep_importance: bool = False, storage: torch.dtype | str | None = None, **options):
        model = distributed.unwrap(model)
        self.model = model
        self.group = process_group  # torch.distributed group (None: the default one, where initialised)
        self.measure = importance.create(method, **options) if isinstance(method, str) else method
        self.names, self.parameters = select_shared(model, heads, shared)
        self.device = single_device(list(zip(self.names, self.parameters)))  # penalty and statistics live there too
        # the state's shapes: each parameter's local shard under FSDP2 (clreg.core.shards), the parameter itself else
        self.params = [shards.local(p) for p in self.parameters]
        self.sharded = any(shards.is_sharded(p) for p in self.parameters)
        if self.sharded:
            _check_sharded(self.measure)
        strength = c if self.measure.regularizes else 0.0
        self.penalty_term = QuadraticPenalty(self.params, strength, decay=decay, prior=prior, mode=penalty,
                                             keep_tasks=keep_tasks, storage=_storage_dtype(storage))
        self.memory_budget = memory_budget  # bytes for the per-sample engine (None: by device, clreg.core.device)
        step_backends.check_backend(step_backend)
        self.step_backend = step_backend  # `step`'s backend when it is not given one (None: chosen per step)
        self.keep_importance = keep_importance  # keep the last task's ω as `last_importance` (a parameter-sized copy)
        self.last_importance: dict[str, Tensor] | None = None
        self.optimizer: torch.optim.Optimizer | None = None  # the task's optimiser as `step` last saw it (squisher)
        self._task_grads: list[Tensor] | None = None
        self._independent: list[Tensor] | None = None
        self._scratch_buffers: list[Tensor] | None = None  # made by the first path that needs them (`_scratch`)
        self._before: list[Tensor] = []  # θ_t, for Δ_t of a path statistic on the foreach backend
        self._before_at: int | None = None  # measure.steps when _before was taken (None: stale)
        self._warned: set[tuple[type, str]] = set()  # warnings end_task has given: each is given once
        self.begin_task()

    @property
    def split(self) -> bool:
        """True if g_t and g'_t come from the two halves of the training minibatch."""
        return bool(getattr(self.measure, "split", False))

    @property
    def needs_independent_batch(self) -> bool:
        """True if every step needs `before_step(independent_loss=...)`: g'_t on a minibatch independent of the
        training one (siu, sib, sos with α ≠ 0; not sos with split, which takes it from the batch's half)."""
        return self.measure.trajectory and self.measure.needs_independent_gradient and not self.split

    @property
    def omega(self) -> dict[str, Tensor]:
        """Accumulated importance Ω per parameter name."""
        return dict(zip(self.names, self.penalty_term.omega))

    @property
    def anchor(self) -> dict[str, Tensor]:
        """Anchor θ* per parameter name."""
        return dict(zip(self.names, self.penalty_term.anchor))

    @property
    def strength(self) -> float:
        """s, a factor on the whole penalty in force (1 by default): training minimises L + s·R(θ). Ω, the
        anchors and c are not touched, so s can be lowered for one task and raised again (De Lange et al.'s
        stability decay lowers it task by task: clreg.train.task_search)."""
        return self.penalty_term.strength

    @strength.setter
    def strength(self, value: float) -> None:
        self.penalty_term.set_strength(value)

    def drop_task(self, task: int) -> None:
        """Remove task `task`'s penalty term (penalty="debiased") to train on its data again as if new."""
        self.penalty_term.drop_task(task)

    def proxy_losses(self) -> list[float | None]:
        """Per consolidated task t, Σ_i Λ_t,i (θ_i − θ̃_t,i)², the quadratic estimate of how much task t's
        loss has risen (needs penalty="separate"/"debiased" or keep_tasks=True; None for dropped tasks)."""
        return self.penalty_term.proxies(self.params)

    def state_dict(self) -> dict:
        """The penalty (Ω, anchors, per-task terms), the measure's lasting state and its statistics of the task
        so far (a trajectory measure's sums and step count), so a checkpoint taken between two steps resumes
        the task where it was. Under fully_shard the per-parameter tensors are DTensors cut as the parameters are
        (sharing this rank's state): `torch.distributed.checkpoint` saves them and loads them on any number of
        ranks, or into one process."""
        state = {"penalty": self.penalty_term.state_dict(), "measure": self.measure.state_dict(),
                 "task": self.measure.task_state_dict()}
        if not self.sharded:
            return state
        return _per_parameter(state, len(self.params), lambda i, t: shards.as_global(t, self.parameters[i]))

    def load_state_dict(self, state: dict) -> None:
        """Restore a `state_dict`, at parameters equal to those it was taken at (load the model's first). Each
        parameter's state may be this rank's shard, the whole tensor (cut into the shard under fully_shard) or a
        DTensor; a shape that fits neither is refused, naming the parameter."""
        state = _per_parameter(state, len(self.params),
                               lambda i, t: shards.as_local(t, self.parameters[i], self.names[i]))
        self.penalty_term.load_state_dict(state["penalty"])
        self.measure.load_state_dict(state["measure"])
        self.begin_task()
        if state.get("task"):  # (checkpoints written before the task state was saved start the task afresh)
            self.measure.load_task_state_dict(state["task"])
            if self.measure.trajectory and self.measure.step_statistic().needs_step:
                self._snapshot()  # θ_t for the next step's Δ_t: the parameters now

    def begin_task(self) -> None:
        """Start a task: θ_start ← θ, per-task statistics reset. Called by the constructor and by
        `end_task`; call it yourself only if you change the parameters in between (re-init)."""
        self.measure.begin_task(self.params)
        self._task_grads = self._independent = None
        self.optimizer = None
        if self.measure.trajectory and self.measure.step_statistic().needs_step:
            self._snapshot(at_start=True)

    def penalty(self) -> Tensor:
        """R(θ) as a scalar to add to the loss; its backward is the analytic 2cΩ ⊙ (θ − θ*)."""
        if self.sharded:
            raise ValueError("under fully_shard the penalty enters the gradient, not the loss: backpropagate the task "
                             "loss and call reg.step(optimizer), or reg.add_penalty_gradient() before optimizer.step()")
        return self.penalty_term(self.params)

    def gradient(self, loss_fn: Callable[[], Tensor], params: list[Tensor] | None = None) -> list[Tensor]:
        """∇ loss_fn() for `params` (default: the shared parameters), dropout off, leaving `.grad` untouched."""
        params = self.parameters if params is None else params
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.enable_grad():
                grads = torch.autograd.grad(loss_fn(), params, allow_unused=True)
        finally:
            self.model.train(was_training)
        grads = [torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)]
        distributed.average_(grads, self.group)  # each rank's batch: averaged, as DDP averages the training gradient
        return grads

    def before_step(self, task_loss: Callable[[], Tensor] | None = None,
                    independent_loss: Callable[[], Tensor] | None = None) -> None:
        """Before `optimizer.step()`: give the closures a trajectory measure needs.

        `independent_loss()` is the task loss on an independent minibatch (for g'_t); `task_loss()` the
        task loss on the training minibatch, needed only when the model has dropout (g_t is taken
        with dropout off, at the cost of one extra pass). Both are evaluated with dropout off.
        """
        if not self.measure.trajectory:
            return
        if self.needs_independent_batch and independent_loss is None:
            raise ValueError(f"method {self.measure.name!r} needs the gradient of an independent minibatch: "
                             "call before_step(independent_loss=lambda: loss_on_other_batch)")
        task = self.gradient(task_loss) if task_loss is not None and self.measure.uses_task_gradient else None
        other = self.gradient(independent_loss) if self.needs_independent_batch else None
        self.set_step_gradients(task, other)

    def set_step_gradients(self, task: list[Tensor] | None = None, independent: list[Tensor] | None = None) -> None:
        """`before_step` with the gradients already taken (dropout off), one tensor per shared parameter in
        `names` order: g_t on the training minibatch and g'_t on the independent one, None where not used. (A
        vectorised trainer takes them for many models in one batched pass.)"""
        if task is not None and self.measure.trajectory and self.measure.uses_task_gradient:
            self._task_grads = task
        if independent is not None and self.needs_independent_batch:
            self._independent = independent

    def backward_split(self, loss_first_half: Tensor, loss_second_half: Tensor) -> None:
        """Backward of (L_A + L_B)/2 + R, keeping g_t = ∇L_A and g'_t = ∇L_B apart (SOS `split`)."""
        if has_active_dropout(self.model):
            raise ValueError("sos with split=True takes g and g' from the training pass, which has dropout on here; "
                             "docs/algorithms.md §2 wants them with dropout off: use split=False (one extra pass per step)")
        (0.5 * loss_first_half).backward(retain_graph=True)
        self._task_grads = torch._foreach_mul(self._grads(), 2.0)
        (0.5 * loss_second_half).backward()
        self.add_penalty_gradient()

    def add_penalty_gradient(self) -> None:
        """Fast alternative to `penalty()` in the loss: after `loss.backward()` on the task loss alone,
        add ∇R = 2cΩ ⊙ (θ − θ*) to the parameters' `.grad` in place (no graph, no allocation)."""
        self.penalty_term.add_gradient_(self.parameters)

    def prepare_step(self) -> None:
        """Just before an `optimizer.step()` that is not yours to call (a framework's): add ∇R to `.grad`
        unless the penalty's backward already put it there this step. Call `after_step()` after the step,
        or `skip_step()` if the optimiser skipped it."""
        if not self.penalty_term.in_grad:
            self.add_penalty_gradient()

    def skip_step(self) -> None:
        """The optimiser did not step (a mixed-precision overflow): nothing accumulates, the parameters and
        the measure's statistics stay where they were, and this step's ∇R is discarded."""
        self._step_done()

    def step(self, optimizer: torch.optim.Optimizer, backend: str | None = None) -> None:
        """Finish a training step after `loss.backward()`: add ∇R to the gradient (unless the penalty's
        backward already put it there), `optimizer.step()`, then the measure's step statistic.

        The three are one regularised step (clreg.core.step), run by a backend: "native" (one fused C pass; the
        default for `torch.optim.Adam`/`AdamW` on float32 CPU tensors), "eager" or "compiled" (clreg's formula
        for a registered optimiser, clreg.core.optimizers: Adam, AdamW, SGD), or "torch" (the optimiser's own
        `step()` between the penalty and the statistic: any optimiser; the default where "native" does not
        apply). All agree to float rounding; "native" and "compiled" give the same bits, "eager" differs from them by
        an ulp on some elements and "torch" by rounding, differences that grow over a run (docs/development.md,
        "Reproducibility"). On the formula backends `.grad` keeps the task-loss gradient.
        """
        self.optimizer = optimizer
        statistic = self._statistic()
        try:
            if statistic is not None:
                self._check_step_inputs(statistic)
            backend = self._backend(optimizer, statistic, backend or self.step_backend)
            if backend != "torch":
                self._formula_step(optimizer, statistic, backend)
                return
            if statistic is not None and statistic.needs_step and self._before_at != self.measure.steps:
                self._snapshot()  # θ_t, for Δ_t
            self.prepare_step()
            optimizer.step()
            if statistic is not None:
                self._observe(statistic)
        finally:
            self._step_done()

    @torch.no_grad()
    def after_step(self) -> None:
        """After `optimizer.step()`: accumulate the trajectory measure's statistic from g_t and Δ_t."""
        try:
            statistic = self._statistic()
            if statistic is not None:
                self._check_step_inputs(statistic)
                self._observe(statistic)
        finally:
            self._step_done()

    def _statistic(self):
        return self.measure.step_statistic() if self.measure.trajectory else None

    def _step_done(self) -> None:
        self.penalty_term.step_done()  # this step's ∇R(θ_t) is used up
        self._task_grads = self._independent = None

    @property
    def _scratch(self) -> list[Tensor]:
        """Parameter-shaped scratch for the foreach path's gradients: made at its first use, so that training through
        the fused `step` holds no such copy of the parameters."""
        if self._scratch_buffers is None:
            self._scratch_buffers = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in self.params]
        return self._scratch_buffers

    def _snapshot(self, at_start: bool = False) -> None:
        """θ_t for the next Δ_t on the foreach path. At a task's start it is the measure's θ_start, read in place:
        a copy of the parameters is made only by the first step that needs a later θ_t (not the fused step's)."""
        start = getattr(self.measure, "start", None)
        if at_start and start:
            self._before = start
        else:
            if not self._before or self._before is start:
                self._before = [torch.empty_like(p, memory_format=torch.contiguous_format) for p in self.params]
            torch._foreach_copy_(self._before, [p.detach() for p in self.params])
        self._before_at = self.measure.steps

    def _check_step_inputs(self, statistic) -> None:
        """Raise, before anything moves, if the statistic lacks a gradient it reads."""
        if self.split:
            if self._task_grads is None:
                raise ValueError("sos with split=True needs backward_split(loss_a, loss_b) each step")
            return
        if self._task_grads is None and statistic.uses_task_gradient and has_active_dropout(self.model):
            raise ValueError("the model has active dropout: pass before_step(task_loss=...) so that g_t "
                             "is taken with dropout off")
        if statistic.needs_independent_gradient and self._independent is None:
            raise ValueError(f"method {self.measure.name!r} needs before_step(independent_loss=...) every step")

    def _backend(self, optimizer: torch.optim.Optimizer, statistic, asked: str | None) -> str:
        """The backend that runs this step (see `step`): `asked`, else "native" where it applies, else "torch"."""
        step_backends.check_backend(asked)
        entry = optimizers.lookup(optimizer)
        scale = self.penalty_term.gradient_scale
        formula = entry is not None and (scale is None or (isinstance(scale, float) and scale == 1.0))
        if statistic is not None:  # the formulas step only the optimiser's parameters: every shared one must be there
            in_optimizer = {p for group in optimizer.param_groups for p in group["params"]}
            formula = formula and all(p in in_optimizer for p in self.parameters)
        if asked in ("eager", "compiled", "native") and not formula:
            raise ValueError(f"the {asked!r} step backend needs a registered optimiser "
                             f"({', '.join(e.name for e in optimizers.UPDATES.values())}) over every regularised "
                             f"parameter and an unscaled penalty gradient; {type(optimizer).__name__} here: use 'torch'")
        term = self.penalty_term
        native = fused.supported(optimizer, statistic) and (not term.narrow or term.storage == torch.bfloat16)
        if asked == "native" and not native:
            raise ValueError("the 'native' step backend runs Adam and AdamW on contiguous float32 CPU tensors, with "
                             "Ω and θ* in float32 or bfloat16 and the C kernel built (CLREG_NATIVE unset)")
        if asked is not None:
            return asked
        if formula and native:
            return "native"
        return "eager" if formula and self.penalty_term.narrow else "torch"

    @torch.no_grad()
    def _formula_step(self, optimizer: torch.optim.Optimizer, statistic, backend: str) -> None:
        grads = self._grads()  # raises for a missing gradient
        term = self.penalty_term
        penalty = (step_backends.PENALTY_IN_GRAD if term.in_grad else step_backends.ADD_PENALTY) if term.active \
            else step_backends.NO_PENALTY
        centres = term.centre if penalty else [None] * len(grads)
        precisions, *penalty_scalars = term.step_weights() if penalty else ([None] * len(grads), 1.0, 0.0)
        states = self.measure.state if statistic else [None] * len(grads)
        weights = (statistic.task_weight, statistic.independent_weight) if statistic else (0.0, 0.0)
        others = [None] * len(grads)
        if self.split:
            others = self._task_grads  # g = g_A; g' = 2 (g_A + g_B)/2 − g_A
            weights = (2.0 * weights[1], weights[0] - weights[1])
        elif self._task_grads is not None:  # g_t taken with dropout off: u = a·g_t + b·g'_t, passed whole
            others = statistic.combine(self._task_grads, self._independent)
            weights = (0.0, 1.0)
        elif self._independent is not None:
            others = self._independent
        regularized = dict(zip(self.parameters, zip(centres, precisions, states, others)))
        if backend == "native":
            fused.adam_step(optimizer, regularized, penalty, statistic, *weights, penalty_scalars=tuple(penalty_scalars))
        else:
            step_backends.optimizer_step(optimizers.lookup(optimizer), optimizer, regularized, penalty, statistic,
                                         *weights, compiled=backend == "compiled", penalty_scalars=tuple(penalty_scalars))
        if statistic is not None:
            self.measure.steps += 1
            self._before_at = None  # θ_t is not kept on this path

    def _observe(self, statistic) -> None:
        """The foreach backend: g_t and g'_t resolved (penalty, split, dropout), Δ_t, one statistic update."""
        task_grads, independent = self._task_grads, self._independent
        if self.split:
            total = self.penalty_term.task_gradient(self._grads(), out=self._scratch)  # (g_A + g_B) / 2
            independent = torch._foreach_mul(total, 2.0)
            torch._foreach_sub_(independent, task_grads)
        elif task_grads is None and statistic.uses_task_gradient:
            task_grads = self.penalty_term.task_gradient(self._grads(), out=self._scratch)
        delta = None
        if statistic.needs_step:
            if self._before_at != self.measure.steps:
                raise ValueError("a task cannot mix Regularizer.step(optimizer) with optimizer.step() + after_step(); "
                                 "use one of the two from the task's start")
            theta = [p.detach() for p in self.params]
            delta = torch._foreach_sub(theta, self._before)
        self.measure.accumulate(task_grads, independent, delta)
        if statistic.needs_step:
            self._snapshot()

    def _grads(self) -> list[Tensor]:
        grads = [shards.local(p.grad) for p in self.parameters]
        missing = [n for n, g in zip(self.names, grads) if g is None]
        if missing:
            raise ValueError(f"parameter {missing[0]!r} has no gradient: call after_step() after loss.backward() "
                             "and optimizer.step(), and keep every regularised parameter in the loss")
        return grads

    def end_task(self, inputs: Inputs | None = None, labels: Tensor | None = None,
                 forward: Callable[[Inputs], Tensor] | None = None,
                 optimizer: torch.optim.Optimizer | None = None) -> dict[str, Tensor] | None:
        """End of a task: measure ω (from the trajectory, on `inputs`, or from the optimiser), Ω ← γΩ + ω, θ* ← θ.

        `inputs` is a tensor, or a dict of tensors with a common first dimension (keyword inputs, e.g. a
        tokenised batch's input_ids and attention_mask). `forward(x)` maps inputs to the task's logits (default
        `model(x)`, `model(**x)` for a dict); `labels` are needed only by the empirical and batched Fisher.
        `optimizer` is the task's Adam/AdamW, whose state squisher reads (default: the one `step` last stepped).
        Returns ω per parameter name (None for fine-tuning).
        """
        if not self.measure.regularizes:
            self.begin_task()
            return None
        with self._once():
            return self._end_task(inputs, labels, forward, optimizer)

    def _end_task(self, inputs: Inputs | None, labels: Tensor | None, forward: Callable[[Inputs], Tensor] | None,
                  optimizer: torch.optim.Optimizer | None) -> dict[str, Tensor]:
        if self.measure.trajectory and getattr(self.measure, "steps", None) == 0:
            warnings.warn(f"end_task: the {self.measure.name} measure saw no optimiser step in this task, so the "
                          "task's importance is 0 and nothing protects it: call reg.after_step() after each "
                          "optimizer.step(), or use reg.step(optimizer)", NoStepsWarning, stacklevel=3)
        sample = None
        if inputs is not None:
            model_inputs.check_inputs(inputs)
            if forward is None and self.measure.needs_sample and isinstance(inputs, Tensor):
                _check_single_input(self.model)
            labels = None if labels is None else labels.to(self.device)
            sample = TaskSample(self.model, model_inputs.to_device(inputs, self.device), labels, forward, self.memory_budget,
                                self.group)
        elif self.measure.needs_sample:
            raise ValueError(f"method {self.measure.name!r} measures importance on data: "
                             "call end_task(inputs) with a sample of the task's inputs")
        if self.measure.needs_optimizer:
            self.measure.optimizer = optimizer if optimizer is not None else self.optimizer
        if self.measure.needs_sample or self.measure.needs_optimizer:  # measured on the model's parameters
            omega = [_local_part(o, p) for o, p in zip(self.measure.task_importance(self.parameters, sample),
                                                       self.parameters)]
        else:  # from the state, local already
            omega = self.measure.task_importance(self.params, sample)
        self.penalty_term.consolidate(omega, self.params, cumulative=self.measure.cumulative)
        measured = dict(zip(self.names, omega))
        if self.keep_importance:
            self.last_importance = measured
        self.begin_task()
        return measured

    @contextmanager
    def _once(self) -> Iterator[None]:
        """Warnings raised within: each (category, text) passed on the first time only, over this Regularizer's
        life (a measure warns at every task end otherwise: the per-sample engine's vmap fallback, for one)."""
        caught: list[warnings.WarningMessage] = []
        try:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                yield
        finally:  # (the user's filters apply again here: "error" raises, "ignore" drops)
            for warning in caught:
                key = (warning.category, str(warning.message))
                if key not in self._warned:
                    self._warned.add(key)
                    warnings.warn_explicit(warning.message, warning.category, warning.filename, warning.lineno,
                                           source=warning.source)


class NoStepsWarning(UserWarning):
    """A trajectory measure reached a task's end without having seen a step (its importance is 0)."""


def _local_part(omega: Tensor, param: Tensor) -> Tensor:
    """A measure's ω for `param` as the state holds it: a DTensor's local shard; a full-size ω (a post-task
    measure's, summed over the ranks) cut as the parameter is; ω itself for an unsharded parameter."""
    return shards.local(omega) if shards.is_sharded(omega) else shards.shard_of(omega, param)


def _check_sharded(measure: ImportanceMeasure) -> None:
    """Refuse what clreg does not do under FSDP2 yet: statistics that take gradients by their own backward pass."""
    if measure.trajectory and (measure.needs_independent_gradient or getattr(measure, "split", False)):
        raise ValueError(f"method {measure.name!r} takes g'_t on an independent minibatch, which clreg does not "
                         "reduce across fully_shard's ranks yet: use si, or sos with alpha=0, or a post-task measure")


STORAGE = {"fp32": None, "bf16": torch.bfloat16}  # the run setting's names (None: the parameters' own dtype)


def _storage_dtype(storage: torch.dtype | str | None) -> torch.dtype | None:
    """`storage` as a dtype: a torch dtype, None, or one of STORAGE's names."""
    if storage is None or isinstance(storage, torch.dtype):
        return storage
    if storage not in STORAGE:
        raise ValueError(f"storage must be a torch dtype or one of {', '.join(STORAGE)}, got {storage!r}")
    return STORAGE[storage]


def _check_single_input(model: nn.Module) -> None:
    """Raise ValueError if `model(x)` cannot give logits because its forward needs more arguments (a
    MultiHead's model(x, task)): say what to pass instead."""
    params = list(inspect.signature(model.forward).parameters.values())
    required = [p.name for p in params if p.default is p.empty and
                p.kind in (p.POSITIONAL_ONLY, p.POSITIONAL_OR_KEYWORD)]
    if len(required) > 1:
        raise ValueError(f"{type(model).__name__}.forward takes ({', '.join(required)}), so the sample's logits "
                         f"cannot be model(x): pass forward=, e.g. reg.end_task(x, forward=lambda x: model(x, task)) "
                         f"(clreg.models.build.task_forward(model, task) does this for a MultiHead)")


def _per_parameter(state, count: int, fn: Callable[[int, Tensor | None], Tensor | None]):
    """`state` (nested dicts and lists) with every per-parameter list (`count` entries, each a tensor or None)
    replaced by [fn(i, entry)]; everything else as it is."""
    if isinstance(state, dict):
        return {key: _per_parameter(value, count, fn) for key, value in state.items()}
    if isinstance(state, (list, tuple)):
        if len(state) == count and all(t is None or isinstance(t, Tensor) for t in state):
            return [fn(i, t) for i, t in enumerate(state)]
        return [_per_parameter(value, count, fn) for value in state]
    return state
