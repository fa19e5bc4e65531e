"""Importances measured after a task on a sample of its data (docs/algorithms.md §3), and the constant measures.

Every sensitivity measure is a weighted sum over samples of square or abs of a per-sample gradient
J_θ(x)ᵀ v, where the cotangent v on the logits depends on the measure; `persample.py` computes it. The batched
Fisher alone squares the gradient of each batch's mean loss instead (one backward pass per batch).

A sample's logits are (C,) for a classifier or (T, C) for a sequence model (one row per token). For a sequence the
sample is the whole sequence: its loss is the sum of its token losses (tokens labelled IGNORE_INDEX left out), and
the Fisher family's per-sample gradient is that of the sum (docs/algorithms.md §3, "Sequence models").
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

from clreg.distributed import collectives as distributed
from clreg.core.options import Option
from clreg.importance import inputs as model_inputs
from clreg.importance.base import ImportanceMeasure, TaskSample, zeros_like_all
from clreg.importance.persample import default_forward, per_sample_statistics
from clreg.importance.rules import power_of

IGNORE_INDEX = -100  # the label of a token that is not scored (padding), as in torch's and Hugging Face's losses


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
            totals, count = self.sums(params, sample)
        finally:
            sample.model.train(was_training)
        count = distributed.sum_(totals, count, sample.group)  # each rank's share
        torch._foreach_div_(totals, float(count))
        return self.finish(totals)

    def sums(self, params: list[Tensor], sample: TaskSample) -> tuple[list[Tensor], int]:
        """This process's sum of the statistic over its sample, model in eval mode, and the number of terms."""
        totals = per_sample_statistics(sample.model, params, sample.inputs, self.cotangents, self.power,
                                       labels=sample.labels, forward=sample.forward, memory_budget=sample.memory_budget)
        return totals, model_inputs.check_inputs(sample.inputs)


def _at_least_float32(logits: Tensor) -> Tensor:
    """Logits in float32, or in their own precision if higher (half models get a float32 softmax)."""
    return logits.to(torch.promote_types(logits.dtype, torch.float32))


def _classifier_logits(logits: Tensor) -> Tensor:
    """(n, C) logits in at least float32; ValueError for sequence logits, which only the Fisher family measures."""
    if logits.dim() != 2:
        raise ValueError(f"MAS and its variants take (samples, classes) logits, got {tuple(logits.shape)}: sequence "
                         "logits (samples, tokens, classes) are measured by the Fisher family")
    return _at_least_float32(logits)


def token_view(logits: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor | None]:
    """(n, C) or (n, T, C) logits as (n, T, C) (T = 1 for a classifier) and their labels as (n, T); ValueError
    for other shapes, or labels not shaped like the logits without their class dimension."""
    if logits.dim() not in (2, 3):
        raise ValueError(f"the logits must be (samples, classes) or (samples, tokens, classes), got {tuple(logits.shape)}")
    if labels is not None and labels.shape != logits.shape[:-1]:
        raise ValueError(f"the labels must be shaped like the logits without their class dimension, "
                         f"{tuple(logits.shape[:-1])}, got {tuple(labels.shape)}")
    if logits.dim() == 3:
        return logits, labels
    return logits.unsqueeze(1), None if labels is None else labels.unsqueeze(1)


def sample_losses(logits: Tensor, labels: Tensor) -> Tensor:
    """Each sample's negative log-likelihood of its labels, (n,): a sequence's is the sum of its token losses, the
    tokens labelled IGNORE_INDEX left out."""
    z, y = token_view(logits, labels)
    token = F.cross_entropy(_at_least_float32(z).flatten(0, 1), y.flatten(), reduction="none", ignore_index=IGNORE_INDEX)
    return token.view(y.shape).sum(1)


def _one_token_each(v: Tensor, w: Tensor) -> tuple[Tensor, Tensor]:
    """Cotangents (K, n, T, C) and weights (K, n, T) made T·K cotangents that each keep one token's row: the
    statistic then sums h over the tokens' separate gradients instead of taking h of their sum."""
    tokens = v.shape[2]
    if tokens == 1:
        return v, w
    eye = torch.eye(tokens, dtype=v.dtype, device=v.device)
    v = (v.unsqueeze(0) * eye[:, None, None, :, None]).flatten(0, 1)
    return v, w.unsqueeze(0).expand(tokens, *w.shape).flatten(0, 1)


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
    """∇_z (−log q(y)) = q − e_y for each label y, shaped like q ((n, C) or (n, T, C)); 0 where y = IGNORE_INDEX."""
    scored = labels != IGNORE_INDEX
    one_hot = F.one_hot(torch.where(scored, labels, 0), q.shape[-1]).to(q.dtype)
    return (q - one_hot) * scored.unsqueeze(-1).to(q.dtype)


class Fisher(SensitivityMeasure):
    """Diagonal Fisher (EWC): E_x E_{y~q_x} g(x, y)², exact over all labels, sampled or empirical (per-sample
    squared gradients), or batched (the squared gradient of each batch's mean loss on the true labels)."""

    name = "fisher"
    description = "EWC: diagonal Fisher information (exact over labels; sampled; empirical; batched)"
    modes = ("exact", "sampled", "empirical", "batched")
    settings = (Option("fisher_mode", str, "exact", "Fisher family: exact (all labels), sampled, empirical or batched",
                       choices=modes, argument="mode"),
                Option("fisher_draws", int, 1, "Fisher family, sampled: labels drawn per sample (per token)", minimum=1,
                       argument="draws"),
                Option("fisher_batch", int, 32, "Fisher family, batched: samples b per batch whose mean loss's gradient "
                       "is squared", minimum=1, argument="batch", key_when_default=False))
    from_run = ("seed",)

    def __init__(self, mode: str = "exact", draws: int = 1, batch: int = 32, seed: int = 0):
        if mode not in self.modes:
            raise ValueError(f"Fisher mode must be one of {', '.join(self.modes)}, got {mode!r}")
        if draws < 1:
            raise ValueError(f"draws must be >= 1, got {draws}")
        if batch < 1:
            raise ValueError(f"the batched Fisher's batch size must be >= 1, got {batch}")
        self.mode, self.draws, self.batch = mode, draws, batch
        self.generator = torch.Generator().manual_seed(seed)
        self._seed: int | None = None  # the current sample's draws (start_draws)
        self._row = 0

    def options(self) -> dict:  # noqa: D102
        if self.mode == "sampled":
            return {"mode": self.mode, "draws": self.draws}
        return {"mode": self.mode, "batch": self.batch} if self.mode == "batched" else {"mode": self.mode}

    def state_dict(self) -> dict:  # noqa: D102
        return {"generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.generator.set_state(state["generator"])

    def sums(self, params: list[Tensor], sample: TaskSample) -> tuple[list[Tensor], int]:  # noqa: D102
        if self.mode == "batched":
            return batch_gradient_sums(params, sample, self.batch, self.power)
        if self.mode == "sampled":  # where this rank's samples start among all ranks': their draws are theirs
            self.start_draws(distributed.offset(model_inputs.check_inputs(sample.inputs), sample.group))
        return super().sums(params, sample)

    def start_draws(self, first_row: int = 0) -> None:
        """A new sample's draws: one seed from the measure's generator (the same on every rank), and the row the
        next chunk's first sample has in the whole sample (this rank's offset under data parallelism)."""
        self._seed = int(torch.randint(0, 2 ** 62, (1,), generator=self.generator))
        self._row = first_row

    def draw(self, q: Tensor) -> Tensor:
        """Labels (n, T, k) drawn from token probabilities q (n, T, C) of the next n samples: by inverse CDF from
        uniforms that depend only on the seed and each sample's row in the whole sample (a generator per row), so
        that the draws are the same however the sample is cut into chunks or shared among ranks."""
        if self._seed is None:
            self.start_draws()
        n, tokens, classes = q.shape
        rows = range(self._row, self._row + n)
        self._row += n
        u = torch.stack([torch.rand(tokens, self.draws, dtype=torch.float64,
                                    generator=torch.Generator().manual_seed(self._seed + row)) for row in rows])
        cdf = q.double().cumsum(-1)
        return torch.searchsorted(cdf, u.to(q.device)).clamp_max_(classes - 1)

    def cotangents(self, logits: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """(K, n, C) cotangents and (K, n) weights for (n, C) logits; (K, n, T, C) and (K, n, T) for (n, T, C)."""
        z, y = token_view(logits, labels)
        v, w = self.token_cotangents(_at_least_float32(z).softmax(dim=-1), y)
        return (v, w) if logits.dim() == 3 else (v.squeeze(2), w.squeeze(2))

    def token_cotangents(self, q: Tensor, labels: Tensor | None) -> tuple[Tensor, Tensor]:
        """Cotangents (K, n, T, C) and weights (K, n, T) for token probabilities q (n, T, C) and labels (n, T)."""
        n, tokens, classes = q.shape
        scored = None if labels is None else labels != IGNORE_INDEX
        if self.mode == "exact":
            if self.power == "abs" and tokens > 1:
                raise ValueError(f"{self.name}'s exact mode on sequence logits would be E|sum_t g_t| over all C^T label "
                                 "sequences, which clreg does not compute: use fisher_mode='sampled' (k joint draws)")
            if self.power == "square" and classes > 1:
                v, w = fisher_square_root(q.flatten(0, 1)).view(classes - 1, n, tokens, classes), \
                    q.new_ones(classes - 1, n, tokens)
            else:
                eye = torch.eye(classes, dtype=q.dtype, device=q.device)
                v, w = q.unsqueeze(0) - eye[:, None, None, :], q.permute(2, 0, 1)
            if scored is not None:
                v = v * scored.unsqueeze(-1).to(v.dtype)
            return _one_token_each(v, w)  # the joint Fisher of independent tokens: the sum of the tokens' (exact)
        if self.mode == "empirical":
            if labels is None:
                raise ValueError("the empirical Fisher needs the sample's labels")
            return _label_cotangents(q, labels).unsqueeze(0), q.new_ones(1, n, tokens)
        drawn = self.draw(q)
        if scored is not None:
            drawn = torch.where(scored.unsqueeze(-1), drawn, IGNORE_INDEX)
        v = torch.stack([_label_cotangents(q, drawn[..., j]) for j in range(self.draws)])
        return v, q.new_full((self.draws, n, tokens), 1.0 / self.draws)


def batch_bounds(n: int, b: int) -> list[tuple[int, int]]:
    """The batched Fisher's batches of a sample of n: ⌊n/b⌋ runs of b consecutive samples, the last n mod b samples
    left out; the whole sample as one batch where n < b."""
    if n < b:
        return [(0, n)]
    return [(start, start + b) for start in range(0, n - b + 1, b)]


def batch_gradient_sums(params: list[Tensor], sample: TaskSample, b: int, power: str) -> tuple[list[Tensor], int]:
    """Σ_batches h(∇θ (1/|B|) Σ_{x∈B} ℓ(x, y_x)) over `batch_bounds`, h = square or abs, on the sample's true labels,
    one forward and backward pass per batch; and the number of batches."""
    if sample.labels is None:
        raise ValueError("the batched Fisher squares the gradient of each batch's loss on the sample's true labels: "
                         "pass them, reg.end_task(inputs, labels)")
    forward = sample.forward or default_forward(sample.model, sample.inputs)
    bounds = batch_bounds(model_inputs.check_inputs(sample.inputs), b)
    totals = zeros_like_all(params)
    for start, stop in bounds:
        with torch.enable_grad():
            logits = forward(model_inputs.take(sample.inputs, start, stop))
            loss = sample_losses(logits, sample.labels[start:stop]).mean()
        for total, g in zip(totals, torch.autograd.grad(loss, params, allow_unused=True)):
            if g is not None:  # (a parameter the loss does not reach has a zero gradient)
                total.add_(power_of(g, power))
    return totals, len(bounds)


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
        q = _classifier_logits(logits).softmax(dim=1)
        v = 2 * q * (q - q.square().sum(1, keepdim=True))  # ∂‖q‖²/∂z
        return v.unsqueeze(0), q.new_ones(1, q.shape[0])


class MemoryAwareSynapsesLogits(SensitivityMeasure):
    """MAS on the logits: (1/n) Σ_x abs(∇θ ‖z_x‖²)."""

    name = "mas-logits"
    description = "MAS on the logits: |grad of squared L2 norm of the logits|"
    power = "abs"

    def cotangents(self, logits, labels):  # noqa: D102
        z = _classifier_logits(logits)
        return (2 * z).unsqueeze(0), z.new_ones(1, z.shape[0])


class MaxMemoryAwareSynapses(SensitivityMeasure):
    """MASX: (1/n) Σ_x abs(∇θ q_x(y0)²), y0 = argmax q_x."""

    name = "masx"
    description = "MAS-max: |grad of the squared largest softmax probability|"
    power = "abs"

    def cotangents(self, logits, labels):  # noqa: D102
        q = _classifier_logits(logits).softmax(dim=1)
        top, y0 = q.max(dim=1)
        v = -2 * top.square().unsqueeze(1) * _label_cotangents(q, y0)  # ∂q(y0)²/∂z = 2q(y0)²(e_y0 − q)
        return v.unsqueeze(0), q.new_ones(1, q.shape[0])


class MaxMemoryAwareSynapsesLogits(SensitivityMeasure):
    """MASX on the logits: (1/n) Σ_x abs(∇θ (max z_x)²)."""

    name = "masx-logits"
    description = "MAS-max on the logits: |grad of the squared largest logit|"
    power = "abs"

    def cotangents(self, logits, labels):  # noqa: D102
        z = _classifier_logits(logits)
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
