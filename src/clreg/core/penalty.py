"""The shared quadratic penalty over tasks and its analytic gradient (docs/algorithms.md §1, §4).

Every combination of per-task penalties that docs/algorithms.md §4 defines is one quadratic form in θ,

    R(θ) = Σ_i P_i (θ_i − m_i)² + K,

with a precision P, a centre m and a constant K, so the training step needs only P and m, whatever the
mode and however many tasks there are (the gradient is 2P ⊙ (θ − m)):
- online (default): P = cΩ + λ_prior with Ω ← γΩ + ω after each task, m = θ* (the latest anchor), K = 0;
- separate: Σ_t Λ_t (θ − θ*_t)² + λ_prior θ², Λ_t = c·ω_t, one anchor per task: P = ΣΛ_t + λ_prior,
  m = ΣΛ_t θ*_t / P;
- debiased: Σ_t Λ_t (θ − θ̃_t)² + λ_prior θ² with the centres θ̃_t of docs/algorithms.md §4: P as for separate, and
  m equals the latest anchor until a task's term is dropped (`drop_task`, for revisiting it).
The per-task terms are kept for separate and debiased (and for proxy losses when `keep_tasks`; in
online mode they follow the debiased recursion with P = cΩ + λ_prior, exact for γ = 1 and an
approximation for γ < 1).
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from clreg.core import formulas, shards

MODES = ("online", "separate", "debiased")


@dataclass
class TaskTerm:
    """One task's term Σ_i Λ_i (θ_i − centre_i)²: θ*_t for separate, θ̃_t for debiased."""

    precision: list[Tensor]
    centre: list[Tensor]


class QuadraticPenalty:
    """Ω, the anchors and the precision/centre form of R; evaluates R and ∇R = 2P ⊙ (θ − m).

    Parameters are held as a list of tensors (the regularised, shared parameters in a fixed order).
    """

    def __init__(self, params: list[Tensor], c: float, decay: float = 1.0, prior: float = 0.0,
                 mode: str = "online", keep_tasks: bool = False, storage: torch.dtype | None = None):
        if c < 0:
            raise ValueError(f"c must be >= 0, got {c}")
        if not 0 < decay <= 1:
            raise ValueError(f"decay must be in (0, 1], got {decay}")
        if prior < 0:
            raise ValueError(f"prior must be >= 0, got {prior}")
        if mode not in MODES:
            raise ValueError(f"penalty mode must be one of {', '.join(MODES)}, got {mode!r}")
        if decay != 1.0 and mode != "online":
            raise ValueError(f"decay (γ = {decay}) is defined for the online penalty only, not {mode!r}")
        if storage is not None and (not isinstance(storage, torch.dtype) or not storage.is_floating_point):
            raise ValueError(f"the penalty's storage must be a floating-point torch dtype (torch.bfloat16), got {storage!r}")
        narrow = storage is not None and any(storage != p.dtype for p in params)
        if narrow and (mode != "online" or keep_tasks):
            raise ValueError(f"Ω and θ* in {storage} are supported for the online penalty without per-task terms only, "
                             f"not penalty mode {mode!r}{' with keep_tasks' if keep_tasks else ''}")
        self.c, self.decay, self.prior, self.mode = float(c), float(decay), float(prior), mode
        self.storage = storage  # Ω and θ*'s dtype (None: each parameter's own); the step computes in θ's
        self._dtypes = [p.dtype for p in params]  # for the scratch buffers, which hold values in θ's precision
        self.strength = 1.0  # s: the penalty in force is s·R(θ) (set_strength; De Lange et al.'s stability decay)
        self.keep_tasks = keep_tasks or mode != "online"
        self.omega = [torch.zeros_like(p, dtype=storage, memory_format=torch.contiguous_format) for p in params]
        self.anchor = [torch.zeros_like(o) for o in self.omega]  # before task 1 the prior pulls towards 0
        self.centre = self.anchor if mode == "online" else [a.clone() for a in self.anchor]
        self.tasks: list[TaskTerm | None] = []  # per task, None once dropped
        self.constant = 0.0  # K, in float64
        self.tasks_consolidated = 0
        self._twice_precision: list[Tensor] | None = None  # 2P, cached between consolidations
        self._debiased: list[Tensor] | None = None  # θ̃ bookkeeping: ΣΛ_t θ̃_t in float64 (keep_tasks)
        self._diff: list[Tensor] | None = None  # scratch for evaluating R, (θ − m)²: allocated by the first `value`
        self._grad: list[Tensor] | None = None  # ∇R(θ_t) as last put into .grad: allocated by the first `gradient`
        self.gradient_scale: float | Tensor | None = None  # .grad holds gradient_scale·grad (None: no ∇R)

    @property
    def diff(self) -> list[Tensor]:
        """Scratch for evaluating R, one tensor per parameter: allocated at first use, so that training that never
        evaluates R (the fused `Regularizer.step` path) holds no such copy of the parameters."""
        if self._diff is None:
            self._diff = [torch.zeros_like(a, dtype=dtype) for a, dtype in zip(self.anchor, self._dtypes)]
        return self._diff

    @property
    def grad(self) -> list[Tensor]:
        """∇R(θ_t) as `gradient` last computed it (what `.grad` received): allocated at first use, so that the fused
        `Regularizer.step` path, which forms ∇R inside its kernel, holds no such copy of the parameters."""
        if self._grad is None:
            self._grad = [torch.zeros_like(a, dtype=dtype) for a, dtype in zip(self.anchor, self._dtypes)]
        return self._grad

    @property
    def narrow(self) -> bool:
        """True where Ω and θ* are stored in a dtype other than their parameters' (bf16 storage)."""
        return any(o.dtype != dtype for o, dtype in zip(self.omega, self._dtypes))

    @property
    def active(self) -> bool:
        """True while R is not identically 0: the prior acts from the first task on (docs/algorithms.md §4), c·Ω once a
        task has been consolidated."""
        return self.strength > 0 and (self.prior > 0 or (self.tasks_consolidated > 0 and self.c > 0))

    def set_strength(self, strength: float) -> None:
        """Scale the whole penalty in force: s·R(θ), its value and its gradient (prior included). The terms,
        Ω and the anchors are unchanged, so s can go back up: it is a setting of the training, not of the
        tasks' importance."""
        if not strength >= 0:
            raise ValueError(f"penalty strength must be >= 0, got {strength}")
        self.strength = float(strength)
        self._twice_precision = None

    @property
    def in_grad(self) -> bool:
        """True if this step's `.grad` already holds ∇R: set by the penalty's backward pass or by
        `add_gradient_`, never by evaluating R (logging R changes nothing), cleared by `step_done`."""
        return self.gradient_scale is not None

    def step_done(self) -> None:
        """The optimiser step consumed ∇R(θ_t): the next step starts without it."""
        self.gradient_scale = None

    def _gradient_added(self, scale: float | Tensor) -> None:
        self.gradient_scale = scale if self.gradient_scale is None else self.gradient_scale + scale

    def precision(self) -> list[Tensor]:
        """P = c·Ω + λ_prior per parameter tensor (online), or ΣΛ_t + λ_prior over the kept terms."""
        if self.mode == "online":
            p = torch._foreach_mul(self.omega, self.c)
        else:
            p = [torch.zeros_like(o) for o in self.omega]
            for term in self.tasks:
                if term is not None:
                    torch._foreach_add_(p, term.precision)
        if self.prior:
            torch._foreach_add_(p, self.prior)
        return p

    @torch.no_grad()
    def consolidate(self, omega: list[Tensor], params: list[Tensor], cumulative: bool = True) -> None:
        """End of a task: Ω ← γΩ + ω (or Ω ← ω when not cumulative), θ* ← θ, per-task term added."""
        if not cumulative and self.keep_tasks:
            raise ValueError("a measure that replaces Ω (l2-const) works with the online penalty only, "
                             "without per-task terms")
        previous = self.precision() if self.keep_tasks else None
        if cumulative:
            if self.decay != 1.0:
                torch._foreach_mul_(self.omega, self.decay)
            torch._foreach_add_(self.omega, omega)
        else:
            torch._foreach_copy_(self.omega, omega)
        torch._foreach_copy_(self.anchor, [p.detach() for p in params])
        if self.keep_tasks:
            self.tasks.append(self._new_term(torch._foreach_mul(omega, self.c), previous))
        self.tasks_consolidated += 1
        self._refresh()

    def _new_term(self, task_precision: list[Tensor], previous: list[Tensor]) -> TaskTerm:
        """Task T's term: centre θ*_T (separate) or θ̃_T = θ*_T + P_{<T}(θ*_T − m_{<T}) / Λ_T (debiased).

        A small Λ_T puts θ̃_T far away, and the term still matters: its gradient carries the move of the
        anchor to θ*_T. Only where Λ_T = 0, or θ̃_T would overflow, is there no term (docs/algorithms.md §4)."""
        if self.mode == "separate":
            return TaskTerm(task_precision, [a.clone() for a in self.anchor])
        centres = []
        for lam, p_old, m_old, a in zip(task_precision, previous, self._debiased_centre(), self.anchor):
            anchor = a.double()
            centre = anchor + p_old.double() * (anchor - m_old) / lam.double()
            undefined = ~torch.isfinite(centre.to(a.dtype)) | (lam == 0)
            lam.masked_fill_(undefined, 0.0)
            centres.append(torch.where(undefined, anchor, centre).to(a.dtype))
        return TaskTerm(task_precision, centres)

    def _debiased_centre(self) -> list[Tensor]:
        """m of the kept debiased terms (float64), the latest anchor where there is no precision."""
        b = [torch.zeros_like(a, dtype=torch.float64) for a in self.anchor]
        p = [torch.full_like(a, self.prior, dtype=torch.float64) for a in self.anchor]
        for term in self.tasks:
            if term is not None:
                for bi, pi, lam, centre in zip(b, p, term.precision, term.centre):
                    bi.addcmul_(lam.double(), centre.double())
                    pi.add_(lam.double())
        return [torch.where(pi > 0, bi / pi.clamp_min(1e-300), a.double()) for bi, pi, a in zip(b, p, self.anchor)]

    @torch.no_grad()
    def _refresh(self) -> None:
        """Recompute 2P, the centre m and the constant K after the terms changed."""
        self._twice_precision = None
        if self.mode == "online":
            return
        centre = self._debiased_centre()  # Σ Λ_t c_t / P over the kept terms, whatever their centres are
        precision = self.precision()
        constant = 0.0
        for term in self.tasks:
            if term is not None:
                constant += sum(float((lam.double() * c.double().square()).sum())
                                for lam, c in zip(term.precision, term.centre))
        constant -= sum(float((p.double() * m.square()).sum()) for p, m in zip(precision, centre))
        torch._foreach_copy_(self.centre, [m.to(a.dtype) for m, a in zip(centre, self.anchor)])
        self.constant = constant

    def state_dict(self) -> dict:
        """Ω, anchors, centres and the per-task terms as tensors and plain data (for checkpoints)."""
        return {"omega": self.omega, "anchor": self.anchor, "centre": self.centre, "constant": self.constant,
                "tasks_consolidated": self.tasks_consolidated,
                "strength": self.strength,
                "tasks": [None if t is None else {"precision": t.precision, "centre": t.centre} for t in self.tasks]}

    @torch.no_grad()
    def load_state_dict(self, state: dict) -> None:
        """Restore what `state_dict` returned (tensors are copied into this penalty's own)."""
        if len(state["omega"]) != len(self.omega):
            raise ValueError(f"checkpoint has {len(state['omega'])} regularised tensors, this model {len(self.omega)}")
        for mine, theirs in ((self.omega, state["omega"]), (self.anchor, state["anchor"]), (self.centre, state["centre"])):
            for a, b in zip(mine, theirs):
                a.copy_(b)  # across devices too: a checkpoint written on a GPU resumes on the CPU and back
        self.constant, self.tasks_consolidated = float(state["constant"]), int(state["tasks_consolidated"])
        self.strength = float(state.get("strength", 1.0))  # checkpoints before the strength existed: 1
        here = lambda ts: [t.to(o.device, o.dtype) for t, o in zip(ts, self.omega)]  # noqa: E731
        self.tasks = [None if t is None else TaskTerm(here(t["precision"]), here(t["centre"])) for t in state["tasks"]]
        self._twice_precision = None

    @torch.no_grad()
    def drop_task(self, task: int) -> None:
        """Remove task `task`'s term (debiased mode): the other tasks' terms stay exactly as they were,
        so the task's data can be trained on again as if new."""
        if self.mode != "debiased":
            raise ValueError(f"dropping a task's penalty needs penalty mode 'debiased', not {self.mode!r}")
        if not 0 <= task < len(self.tasks) or self.tasks[task] is None:
            kept = [t for t, term in enumerate(self.tasks) if term is not None]
            raise ValueError(f"task {task} has no penalty term to drop; terms are kept for tasks {kept}")
        self.tasks[task] = None
        self._refresh()

    def proxies(self, params: list[Tensor]) -> list[float | None]:
        """Per task t, Σ_i Λ_t,i (θ_i − centre_t,i)²: the quadratic estimate of task t's loss increase."""
        if not self.keep_tasks:
            raise ValueError("per-task proxy losses need the per-task terms: create the penalty with keep_tasks=True")
        with torch.no_grad():
            return [None if term is None else
                    float(sum((lam * (p.detach() - c).square()).sum() for lam, p, c in zip(term.precision, params, term.centre)))
                    for term in self.tasks]

    def step_weights(self) -> tuple[list[Tensor], float, float]:
        """(weights, scale, offset) with 2sP = weights·scale + offset (formulas.penalty_gradient): the online
        penalty's Ω with 2sc and 2s·λ_prior, so that no copy of P is kept; the other modes' cached 2sP, 1, 0."""
        if self.mode == "online":
            return self.omega, 2.0 * self.strength * self.c, 2.0 * self.strength * self.prior
        return self.twice_precision(), 1.0, 0.0

    def twice_precision(self) -> list[Tensor]:
        """2sP per parameter tensor (s: the strength), cached between consolidations (the stacked trainer's and
        the separate and debiased modes'; the online penalty's steps use `step_weights`)."""
        if self._twice_precision is None:
            with torch.no_grad():
                tp = self.precision()
                torch._foreach_mul_(tp, 2.0 * self.strength)
            self._twice_precision = tp
        return self._twice_precision

    @torch.no_grad()
    def value(self, params: list[Tensor]) -> Tensor:
        """R(θ) as a 0-dim tensor on the parameters' device (no host synchronisation, no side effect on
        the gradient bookkeeping)."""
        for d, p, m in zip(self.diff, params, self.centre):
            torch.sub(p.detach(), m, out=d).square_()
        weights, scale, offset = self.step_weights()
        total = sum(torch.dot(d.view(-1), w.view(-1).to(d.dtype)) for d, w in zip(self.diff, weights)) * scale
        if offset:
            total = total + offset * sum(d.sum() for d in self.diff)
        return 0.5 * total + self.strength * self.constant

    @torch.no_grad()
    def gradient(self, params: list[Tensor]) -> list[Tensor]:
        """∇R(θ) = 2P ⊙ (θ − m) (clreg.core.formulas.penalty_gradient), kept in the `grad` buffers."""
        weights, scale, offset = self.step_weights()
        for g, p, m, w in zip(self.grad, params, self.centre, weights):
            g.copy_(formulas.penalty_gradient(p.detach(), m, w, scale, offset))
        return self.grad

    def value_and_grad(self, params: list[Tensor]) -> tuple[Tensor, list[Tensor]]:
        """R(θ) and ∇R(θ) (the gradient in preallocated buffers)."""
        return self.value(params), self.gradient(params)

    @torch.no_grad()
    def add_gradient_(self, params: list[Tensor]) -> None:
        """The fast path: p.grad += 2P ⊙ (θ − m) in place, after the task loss's backward (a sharded parameter's
        local shard of it: clreg.core.shards)."""
        if not self.active:
            return
        for p, g in zip(params, self.gradient([shards.local(p) for p in params])):
            if p.grad is None and shards.is_sharded(p):
                raise ValueError("a sharded parameter has no gradient to add the penalty's to: call it after backward")
            if p.grad is None:
                p.grad = g.clone()
            else:
                shards.local(p.grad).add_(g)
        self._gradient_added(1.0)

    @torch.no_grad()
    def task_gradient(self, grads: list[Tensor], out: list[Tensor]) -> list[Tensor]:
        """`out` ← grads − ∇R(θ_t) if ∇R is in `.grad` this step, else `grads` itself."""
        scale = self.gradient_scale
        if scale is None:
            return grads
        added = self.grad if isinstance(scale, float) and scale == 1.0 else torch._foreach_mul(self.grad, scale)
        for o, g, r in zip(out, grads, added):
            torch.sub(g, r, out=o)
        return out

    def __call__(self, params: list[Tensor]) -> Tensor:
        """R(θ) as a differentiable scalar whose backward is the analytic gradient (no autograd graph)."""
        if not self.active:
            return params[0].new_zeros(())
        return _AnalyticPenalty.apply(self, *params)


class _AnalyticPenalty(torch.autograd.Function):
    """Forward evaluates R; backward puts 2P ⊙ (θ − m) into the gradient and records that it did."""

    @staticmethod
    def forward(ctx, penalty: QuadraticPenalty, *params: Tensor) -> Tensor:  # noqa: D102
        ctx.penalty, ctx.params = penalty, params
        return penalty.value(list(params))

    @staticmethod
    def backward(ctx, grad_output: Tensor):  # noqa: D102
        grad = ctx.penalty.gradient(list(ctx.params))
        unit = grad_output.device.type == "cpu" and grad_output.item() == 1.0  # free on the CPU only
        scale = 1.0 if unit else grad_output.detach()
        ctx.penalty._gradient_added(scale)
        return (None, *(grad if unit else torch._foreach_mul(grad, scale)))
