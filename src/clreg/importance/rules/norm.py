"""The rule for normalisations with an element-wise affine output, y = w ⊙ x̂ + b (LayerNorm, RMSNorm, and
Hugging Face's own LlamaRMSNorm, T5LayerNorm, ...): a sample's gradient is Σ_p δ_p ⊙ x̂_p for w and Σ_p δ_p
for b, over the positions p that share the same w."""
from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.func import functional_call

from clreg.importance.rules.base import Rule, power_of, register

NORMALISATIONS = (nn.LayerNorm, nn.RMSNorm)
NAMES = ("LayerNorm", "RMSNorm")  # the endings of other libraries' normalisation classes


@register
class NormRule(Rule):
    """x̂ is read off the module itself: x̂ = y(w = 1, b = 0) − y(w = 0, b = 0), so the rule needs no knowledge
    of how the module normalises (mean or not, ε, where it casts), only that its output is element-wise affine
    in w and b. The probe checks that on the real weights: y = y(0) + w ⊙ x̂ + b."""

    @classmethod
    def accepts(cls, module):  # noqa: D102
        params = dict(module.named_parameters(recurse=False))
        if not isinstance(module, NORMALISATIONS) and not type(module).__name__.endswith(NAMES):
            return False
        return "weight" in params and set(params) <= {"weight", "bias"}

    def record(self, args, kwargs, output):  # noqa: D102
        self.args, self.kwargs, self.outputs = args, kwargs, [output]
        self.normalised: Tensor | None = None
        # the weights as the call saw them (a sharded model's are gathered only during its forward): small, copied
        self.weights = {name: p.detach().clone() for name, p in self.module.named_parameters(recurse=False)}

    def _affine_parts(self) -> tuple[Tensor, Tensor]:
        """(y(0), x̂) of the recorded call."""
        params = self.weights
        ones = {name: torch.ones_like(p) if name == "weight" else torch.zeros_like(p) for name, p in params.items()}
        zeros = {name: torch.zeros_like(p) for name, p in params.items()}
        self.recording = False  # the module's own hook would fire again
        try:
            with torch.no_grad():
                offset = functional_call(self.module, zeros, self.args, self.kwargs)
                return offset, functional_call(self.module, ones, self.args, self.kwargs) - offset
        finally:
            self.recording = True

    def ran_as_expected(self) -> bool:  # noqa: D102
        if not super().ran_as_expected():
            return False
        offset, normalised = self._affine_parts()
        weight, bias = self.weights["weight"], self.weights.get("bias")
        affine = offset + weight * normalised + (0 if bias is None else bias)
        y = self.outputs[0].detach()
        self.normalised = self.first(normalised)  # `add` needs it: not formed twice
        return affine.shape == y.shape and torch.allclose(affine, y, rtol=1e-5, atol=1e-6 * float(y.abs().max()))

    def per_sample_floats(self) -> int:  # noqa: D102
        return 2 * super().per_sample_floats()

    def _per_sample(self, t: Tensor) -> Tensor:
        """Sum `t` (n, ..., *weight.shape) over everything between samples and the weight's dimensions."""
        shape = self.module.weight.shape
        return t.reshape(t.shape[0], -1, *shape).sum(1)

    def add(self, deltas, power, totals):  # noqa: D102
        delta = self.first(deltas[0])
        weight, bias = self.total(totals, "weight"), self.total(totals, "bias")
        if weight is not None:
            if self.normalised is None:
                self.normalised = self.first(self._affine_parts()[1])
            weight.add_(power_of(self._per_sample(delta * self.normalised), power).sum(0))
        if bias is not None:
            bias.add_(power_of(self._per_sample(delta), power).sum(0))
