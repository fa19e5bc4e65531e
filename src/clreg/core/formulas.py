"""Every step formula of clreg, written once (docs/algorithms.md §2, §4, §5).

Each is an elementwise function of tensors whose scalars broadcast: the same code runs per parameter tensor
(scalars are Python floats), on K runs' stacked `[K, ...]` tensors (scalars are `[K, 1, ...]` columns, one
value per run: clreg.vectorized), eagerly or under `torch.compile`, on any device and dtype. Scalars that
derive from others (1 − β, η/(1 − β₁ᵗ), ...) are derived once, in float64, by the registries
(clreg.core.optimizers, clreg.core.statistic). Nothing is written in place: each returns new tensors, and the
caller decides where they go (clreg.core.step). The native kernel (clreg.core.native) is a registered fast path
for some of them, held to these by tests (tests/test_step.py): bit for bit where the formula's square root is
taken correctly rounded, as C and compiled code take it (torch's eager CPU sqrt may differ by an ulp).

The order of the operations is part of the definition: it fixes the float rounding, so that a run stepping
alone and the same run inside a stacked job give the same bits.
"""
from __future__ import annotations

from torch import Tensor

Scalar = float | Tensor  # a Python number, or a [K, 1, ...] column of per-run values


def is_zero(value: Scalar) -> bool:
    """True for a Python 0 (then a term it multiplies is left out, not computed as 0·x). A column is never
    'zero' here: its runs' zeros give exact zeros (0·x), which equals leaving the term out for finite x."""
    return not isinstance(value, Tensor) and value == 0


def is_one(value: Scalar) -> bool:
    """True for a Python 1 (then a product with it is left out)."""
    return not isinstance(value, Tensor) and value == 1


# the quadratic penalty R(θ) = Σ P (θ − m)² + K (§4): its gradient

def penalty_gradient(theta: Tensor, centre: Tensor, weight: Tensor, scale: Scalar = 1.0, offset: Scalar = 0.0) -> Tensor:
    """∇R = 2P ⊙ (θ − m) with 2P = weight·scale + offset: the online penalty passes Ω with scale 2sc and offset
    2s·λ_prior (no stored copy of P), the others their cached 2sP with 1 and 0. Computed in θ's dtype: the
    penalty's state may be stored in a narrower one (bf16)."""
    twice_precision = weight.to(theta.dtype)
    if not is_one(scale):
        twice_precision = twice_precision * scale
    if not is_zero(offset):
        twice_precision = twice_precision + offset
    return twice_precision * (theta - centre.to(theta.dtype))


# optimiser updates (§5): (param, grad, *state, **scalars) -> (param, state); scalars from clreg.core.optimizers

def adam(param: Tensor, grad: Tensor, exp_avg: Tensor, exp_avg_sq: Tensor, *, weight_decay: Scalar,
         decay_factor: Scalar, decoupled: bool, one_minus_beta1: Scalar, beta2: Scalar, one_minus_beta2: Scalar,
         step_size: Scalar, inverse_bias_correction2_sqrt: Scalar, eps: Scalar) -> tuple[Tensor, tuple[Tensor, Tensor]]:
    """Adam (decoupled=False: g ← g + λθ) and AdamW (decoupled=True: θ ← θ(1 − ηλ)), as torch.optim.Adam:
    m ← m + (1 − β₁)(g − m), v ← β₂v + (1 − β₂)g², θ ← θ − η/(1 − β₁ᵗ) · m / (√v · (1 − β₂ᵗ)^(−½) + ε)."""
    if not is_zero(weight_decay):
        if decoupled:
            param = param * decay_factor
        else:
            grad = grad + weight_decay * param
    exp_avg = exp_avg + one_minus_beta1 * (grad - exp_avg)
    exp_avg_sq = beta2 * exp_avg_sq + one_minus_beta2 * grad * grad
    param = param - step_size * exp_avg / (exp_avg_sq.sqrt() * inverse_bias_correction2_sqrt + eps)
    return param, (exp_avg, exp_avg_sq)


def sgd(param: Tensor, grad: Tensor, momentum_buffer: Tensor, *, lr: Scalar, weight_decay: Scalar, momentum: Scalar,
        one_minus_dampening: Scalar, nesterov: bool, first: bool) -> tuple[Tensor, tuple[Tensor]]:
    """SGD with momentum μ and Nesterov, as torch.optim.SGD: g ← g + λθ; b ← g at the first step, else
    b ← μb + (1 − τ)g; g ← g + μb (Nesterov) or b; θ ← θ − ηg. Without momentum the buffer passes through."""
    if not is_zero(weight_decay):
        grad = grad + weight_decay * param
    if not is_zero(momentum):
        momentum_buffer = grad if first else momentum * momentum_buffer + one_minus_dampening * grad
        grad = grad + momentum * momentum_buffer if nesterov else momentum_buffer
    return param - lr * grad, (momentum_buffer,)


# trajectory statistics (§2): u = a·g_t + b·g'_t, then one kind's update of the state s

def combine(task_grad: Tensor | None, other: Tensor | None, task_weight: Scalar, other_weight: Scalar) -> Tensor:
    """u = a·g + b·g' (g' left out where b is a Python 0)."""
    if other is None or is_zero(other_weight):
        return task_weight * task_grad
    if task_grad is None:
        return other_weight * other
    return task_weight * task_grad + other_weight * other


def path(state: Tensor, u: Tensor, delta: Tensor) -> Tensor:
    """SI's path integral: s ← s − u ⊙ Δ (Δ = θ_new − θ_old)."""
    return state - u * delta


def moment(state: Tensor, u: Tensor, delta: Tensor | None = None, *, decay: Scalar, one_minus_decay: Scalar) -> Tensor:
    """SOS's moment: v ← β·v + (1 − β)·u ⊙ u (β = `decay`; the step Δ is not read)."""
    return decay * state + one_minus_decay * u * u
