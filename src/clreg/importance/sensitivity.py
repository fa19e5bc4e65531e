"""Importances measured after a task on a sample of its data (docs/algorithms.md §3), and the constant measures.

Every sensitivity measure is a weighted sum over samples of square or abs of a per-sample gradient
J_θ(x)ᵀ v, where the cotangent v on the logits depends on the measure; `persample.py` computes it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clreg.distributed import collectives as distributed
from clreg.core.options import Option
from clreg.importance import inputs as model_inputs
from clreg.importance.base import ImportanceMeasure, TaskSample
from clreg.importance.persample import per_sample_statistics


class SensitivityMeasure(ImportanceMeasure):
    """ω = (1/n) Σ_x Σ_k w_xk · h(J_θ(x)ᵀ v_xk), model in eval mode (no dropout)."""

    needs_sample = True
    power = "square"

    def cotangents(self, logits: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Output cotangents (K, n, C) and their weights (K, n) for a chunk of samples."""
        raise NotImplementedError

    def finish(self, omega: list[Tensor]) -> list[Tensor]:
        """Post-processing of the averaged statistic (√ for √Fisher)."""
        return omega

    def task_importance(self, params: list[Tensor], sample: TaskSample | None) -> list[Tensor]:  # noqa: D102
        if sample is None or model_inputs.check_inputs(sample.inputs) == 0:
            raise ValueError(f"method {self.name!r} needs a non-empty data sample at task end")
        was_training = sample.model.training
        sample.model.eval()
        try:
            totals = per_sample_statistics(sample.model, params, sample.inputs, self.cotangents, self.power,
                                           labels=sample.labels, forward=sample.forward,
                                           memory_budget=sample.memory_budget)
        finally:
            sample.model.train(was_training)
        count = distributed.sum_(totals, model_inputs.check_inputs(sample.inputs), sample.group)  # each rank's share
        torch._foreach_div_(totals, float(count))
        return self.finish(totals)


def _at_least_float32(logits: Tensor) -> Tensor:
    """Logits in float32, or in their own precision if higher (half models get a float32 softmax)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def fisher_square_root(q: Tensor) -> Tensor:
    """C − 1 cotangents per sample, (C − 1, n, C), whose outer products sum to the softmax Fisher
    diag(q) − qqᵀ = Σ_y q_y (e_y − q)(e_y − q)ᵀ: the exact Fisher with one backward pass fewer.

    With j = argmax q and M' = diag(q') − q'q'ᵀ (q without j), diag(q) − qqᵀ = Dᵀ M' D where
    D u = (u_k − u_j)_{k≠j}; M' = R Rᵀ by an eigendecomposition (robust where some q_k = 0).
    """
    n, classes = q.shape
    q64 = q.double()
    j = q64.argmax(dim=1)
    keep = ~F.one_hot(j, classes).bool()
    others = q64[keep].view(n, classes - 1)
    m = torch.diag_embed(others) - others.unsqueeze(2) * others.unsqueeze(1)
    eigenvalues, vectors = torch.linalg.eigh(m)
    root = vectors * eigenvalues.clamp_min(0).sqrt().unsqueeze(1)  # (n, C − 1, C − 1), R Rᵀ = M'
    v = q64.new_zeros(n, classes, classes - 1)
    v[keep] = root.reshape(n * (classes - 1), classes - 1)
    v[torch.arange(n), j] = -root.sum(dim=1)
    return v.permute(2, 0, 1).to(q.dtype).contiguous()


def _label_cotangents(q: Tensor, labels: Tensor) -> Tensor:
    """∇_z (−log q(y)) = q − e_y for each sample's label y: shape (n, C)."""
    return q - F.one_hot(labels, q.shape[1]).to(q.dtype)


class Fisher(SensitivityMeasure):
    """Diagonal Fisher (EWC): E_x E_{y~q_x} g(x, y)², exact over all labels, sampled, or empirical."""

    name = "fisher"
    description = "EWC: diagonal Fisher information, per-sample g^2 (exact over labels; sampled; empirical)"
    modes = ("exact", "sampled", "empirical")
    settings = (Option("fisher_mode", str, "exact", "Fisher family: exact (all labels), sampled or empirical",
                       choices=modes, argument="mode"),
                Option("fisher_draws", int, 1, "Fisher family, sampled: labels drawn per sample", minimum=1,
                       argument="draws"))
    from_run = ("seed",)

    def __init__(self, mode: str = "exact", draws: int = 1, seed: int = 0):
        if mode not in self.modes:
            raise ValueError(f"Fisher mode must be one of {', '.join(self.modes)}, got {mode!r}")
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        self.mode, self.draws = mode, draws
        self.generator = torch.Generator().manual_seed(seed)

    def options(self) -> dict:  # noqa: D102
        return {"mode": self.mode, "draws": self.draws} if self.mode == "sampled" else {"mode": self.mode}

    def state_dict(self) -> dict:  # noqa: D102
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.generator.set_state(state["generator"])

    def cotangents(self, logits: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:  # noqa: D102
        q = _at_least_float32(logits).softmax(dim=1)
        n, classes = q.shape
        if self.mode == "exact" and self.power == "square" and classes > 1:
            return fisher_square_root(q), q.new_ones(classes - 1, n)
        if self.mode == "exact":
            eye = torch.eye(classes, dtype=q.dtype, device=q.device)
            return q.unsqueeze(0) - eye.unsqueeze(1), q.t().contiguous()
        if self.mode == "empirical":
            if labels is None:
                raise ValueError("the empirical Fisher needs the sample's labels")
            return _label_cotangents(q, labels).unsqueeze(0), q.new_ones(1, n)
        drawn = torch.multinomial(q.cpu(), self.draws, replacement=True, generator=self.generator).to(q.device)
        v = torch.stack([_label_cotangents(q, drawn[:, j]) for j in range(self.draws)])
        return v, q.new_full((self.draws, n), 1.0 / self.draws)


class SqrtFisher(Fisher):
    """√Fisher: the element-wise square root of the diagonal Fisher."""

    name = "sqrt-fisher"
    description = "square root of the diagonal Fisher"

    def finish(self, omega):  # noqa: D102
        torch._foreach_sqrt_(omega)
        return omega


class AbsoluteFisher(Fisher):
    """AF: E_x E_{y~q_x} abs(g(x, y)), the Fisher with abs in place of the square."""

    name = "af"
    description = "Absolute Fisher: per-sample |g| averaged over the model's label distribution"
    power = "abs"


class MemoryAwareSynapses(SensitivityMeasure):
    """MAS (Aljundi et al. 2018): (1/n) Σ_x abs(∇θ ‖q_x‖²), q = softmax output."""

    name = "mas"
    description = "Memory Aware Synapses: |grad of squared L2 norm of the softmax output|"
    power = "abs"

    def cotangents(self, logits, labels):  # noqa: D102
        q = _at_least_float32(logits).softmax(dim=1)
        v = 2 * q * (q - q.square().sum(1, keepdim=True))  # ∂‖q‖²/∂z
        return v.unsqueeze(0), q.new_ones(1, q.shape[0])


class MemoryAwareSynapsesLogits(SensitivityMeasure):
    """MAS on the logits: (1/n) Σ_x abs(∇θ ‖z_x‖²)."""

    name = "mas-logits"
    description = "MAS on the logits: |grad of squared L2 norm of the logits|"
    power = "abs"

    def cotangents(self, logits, labels):  # noqa: D102
        z = _at_least_float32(logits)
        return (2 * z).unsqueeze(0), z.new_ones(1, z.shape[0])


class MaxMemoryAwareSynapses(SensitivityMeasure):
    """MASX: (1/n) Σ_x abs(∇θ q_x(y0)²), y0 = argmax q_x."""

    name = "masx"
    description = "MAS-max: |grad of the squared largest softmax probability|"
    power = "abs"

    def cotangents(self, logits, labels):  # noqa: D102
        q = _at_least_float32(logits).softmax(dim=1)
        top, y0 = q.max(dim=1)
        v = -2 * top.square().unsqueeze(1) * _label_cotangents(q, y0)  # ∂q(y0)²/∂z = 2q(y0)²(e_y0 − q)
        return v.unsqueeze(0), q.new_ones(1, q.shape[0])


class MaxMemoryAwareSynapsesLogits(SensitivityMeasure):
    """MASX on the logits: (1/n) Σ_x abs(∇θ (max z_x)²)."""

    name = "masx-logits"
    description = "MAS-max on the logits: |grad of the squared largest logit|"
    power = "abs"

    def cotangents(self, logits, labels):  # noqa: D102
        z = _at_least_float32(logits)
        top, y0 = z.max(dim=1)
        v = 2 * top.unsqueeze(1) * F.one_hot(y0, z.shape[1]).to(z.dtype)
        return v.unsqueeze(0), z.new_ones(1, z.shape[0])


class WeightMagnitude(ImportanceMeasure):
    """ω = abs(θ) at the end of the task."""

    name = "weight-magnitude"
    description = "absolute value of each parameter at task end"

    def task_importance(self, params, sample):  # noqa: D102
        return [p.detach().abs() for p in params]


class L2(ImportanceMeasure):
    """ω = 1 for every parameter: plain L2 towards the last anchor, Ω grows with the task count."""

    name = "l2"
    description = "L2 penalty: omega = 1 per task, Omega grows linearly with the task count"

    def task_importance(self, params, sample):  # noqa: D102
        return [torch.ones_like(p) for p in params]


class L2Constant(L2):
    """Ω = 1 throughout: L2 towards the last anchor with a constant strength."""

    name = "l2-const"
    description = "L2 penalty with constant Omega = 1 (does not grow with tasks)"
    cumulative = False


class FineTune(ImportanceMeasure):
    """No penalty: plain sequential training, the lower baseline."""

    name = "finetune"
    description = "fine-tuning: no penalty (c = 0), the forgetting baseline"
    regularizes = False

    def task_importance(self, params, sample):  # noqa: D102
        return [torch.zeros_like(p) for p in params]
