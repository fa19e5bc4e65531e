"""Rules for affine layers: Linear (and a Hugging Face Conv1D, a Linear with its weight stored transposed), and
Conv2d. The per-sample gradient of an affine map is δ ⊗ a summed over the positions where it is applied."""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clreg.importance.rules.base import Rule, bias_gradient, linear_gradient, linear_statistics, power_of, register


@register
class LinearRule(Rule):
    """nn.Linear. On (n, features) inputs the statistic factors: Σ_x Σ_k h(δ_xk ⊗ a_x) = (Σ_k h(δ_k))ᵀ h(a), one
    matrix product per chunk after the cotangents' δ are summed; on inputs with positions, exact per-sample
    gradients by one batched product per cotangent."""

    transposed = False

    @classmethod
    def accepts(cls, module):  # noqa: D102
        return isinstance(module, nn.Linear)

    def record(self, args, kwargs, output):  # noqa: D102
        self.input = args[0].detach()
        self.outputs = [output]
        self.summed: Tensor | None = None

    @property
    def factorised(self) -> bool:
        return self.input.dim() == 2

    def per_sample_floats(self) -> int:  # noqa: D102
        return self.input.numel() // self.samples + super().per_sample_floats()

    def transient_floats(self) -> int:  # noqa: D102
        return 0 if self.factorised else self.module.weight.numel()  # one per-sample gradient, squared in place

    def add(self, deltas, power, totals):  # noqa: D102
        (delta,) = deltas
        if not self.slots:  # its parameters are shared with other modules: the engine forms them (`dense`)
            return
        if not self.factorised:
            return linear_statistics(self.first(delta), self.first(self.input), power, self.total(totals, "weight"),
                                     self.total(totals, "bias"), self.transposed)
        h = power_of(delta, power)
        self.summed = h if self.summed is None else self.summed.add_(h)

    def dense(self, deltas, name):  # noqa: D102
        delta = self.first(deltas[0])
        if name == "bias":
            return bias_gradient(delta)
        return linear_gradient(delta, self.first(self.input), self.transposed)

    def finish(self, power, totals):  # noqa: D102
        if self.summed is None:
            return
        weight, bias = self.total(totals, "weight"), self.total(totals, "bias")
        if weight is not None:
            product = self.summed.t() @ power_of(self.input, power)
            weight.add_(product.t() if self.transposed else product)
        if bias is not None:
            bias.add_(self.summed.sum(0))
        self.summed = None


@register
class TransposedLinearRule(LinearRule):
    """A Hugging Face `Conv1D` (GPT-2's projections): y = a W + b with W stored (in, out)."""

    transposed = True

    @classmethod
    def accepts(cls, module):  # noqa: D102
        weight = getattr(module, "weight", None)
        return (type(module).__name__ == "Conv1D" and isinstance(weight, nn.Parameter) and weight.dim() == 2
                and getattr(module, "nf", None) == weight.shape[1])


def conv_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    """Explicit symmetric padding of a Conv2d, or None where unfold cannot express it."""
    if m.padding_mode != "zeros" or m.groups != 1:
        return None
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return tuple(m.padding)


@register
class Conv2dRule(Rule):
    """nn.Conv2d (zero padding, one group): per-sample gradients as one batched product per kernel offset, on
    strided copies of the padded input (the numbers unfold would give, ~4× faster to build than im2col)."""

    @classmethod
    def accepts(cls, module):  # noqa: D102
        return isinstance(module, nn.Conv2d) and conv_padding(module) is not None

    def record(self, args, kwargs, output):  # noqa: D102
        self.input = args[0].detach()
        self.outputs = [output]
        self.patches: list[Tensor] | None = None

    def per_sample_floats(self) -> int:  # noqa: D102
        w = self.module.weight
        return (self.input.numel() // self.samples + super().per_sample_floats()
                + self.outputs[0][0, 0].numel() * w[0].numel())  # the strided copies of the input

    def transient_floats(self) -> int:  # noqa: D102
        return 2 * self.module.weight.numel()  # the per-kernel-offset products and their stack

    def unfolded_input(self) -> list[Tensor]:
        """Per kernel offset, the (n, positions, in_channels) values each output position multiplies there."""
        m, a, out = self.module, self.input, self.outputs[0]
        (ph, pw), (sh, sw), (dh, dw) = conv_padding(m), m.stride, m.dilation
        n, channels, rows, cols = out.shape[0], a.shape[1], out.shape[2], out.shape[3]
        padded = F.pad(a.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # (n, H, W, C) with zero borders
        kh, kw = m.kernel_size
        return [padded[:, i * dh:i * dh + sh * (rows - 1) + 1:sh, j * dw:j * dw + sw * (cols - 1) + 1:sw, :]
                .reshape(n, rows * cols, channels) for i in range(kh) for j in range(kw)]

    def add(self, deltas, power, totals):  # noqa: D102
        (delta,) = deltas
        n = delta.shape[0]
        delta = delta.permute(0, 2, 3, 1).reshape(n, -1, delta.shape[1]).transpose(1, 2)  # (n, out, positions)
        weight, bias = self.total(totals, "weight"), self.total(totals, "bias")
        if weight is not None:
            if self.patches is None:
                self.patches = self.unfolded_input()
            per_sample = torch.stack([torch.bmm(delta, patch) for patch in self.patches], dim=-1)
            weight.add_(power_of(per_sample, power).sum(0).view_as(weight))
        if bias is not None:
            bias.add_(power_of(delta.sum(2), power).sum(0))

    def finish(self, power, totals):  # noqa: D102
        self.patches = None
