"""Exact per-sample gradients for the parameters no per-layer rule measures (`clreg.importance.rules`): a bare
parameter used in the forward, a parameter shared with a module whose rule cannot give its share, a layer the
rules do not know, or one whose rule's closed form the probe found not to hold (a layer applied twice).

First choice: `torch.func`, vmap of grad over the samples of a chunk, the whole model re-run functionally with
only those parameters differentiated. A model whose forward branches on its inputs' values (a Hugging Face
model that checks whether its attention mask has any padding) cannot run under vmap; for it the gradients are
taken one sample at a time: exact, slower, and said once in a warning.
"""
from __future__ import annotations

import warnings
from typing import Callable

import torch
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from clreg.importance import inputs as model_inputs
from clreg.importance.inputs import Inputs


class FallbackGradients:
    """Adds Σ_x Σ_k h(J_p(x)ᵀ v_xk) to `totals[slot]` for the fallback parameters p (`names`: slot -> name)."""

    def __init__(self, model: nn.Module, forward: Callable[[Inputs], Tensor], names: dict[int, str],
                 params: list[Tensor], power: Callable[[Tensor], Tensor], totals: list[Tensor]):
        self.model, self.forward, self.names, self.params = model, forward, names, params
        self.power, self.totals = power, totals
        self.vectorised: bool | None = None  # None until the first chunk says whether vmap works

    def add(self, x: Inputs, v: Tensor) -> None:
        """The statistics of one chunk: inputs `x` (n samples) and cotangents `v` (K, n, C)."""
        if self.vectorised is not False:
            try:
                sums = self._vectorised(x, v)
            except RuntimeError as err:
                if self.vectorised:  # vmap ran on an earlier chunk: this is a genuine error
                    raise
                self.vectorised = False
                warnings.warn(f"the model's forward cannot run under torch.func.vmap ({str(err).splitlines()[0][:160]}); "
                              f"per-sample gradients of {len(self.names)} parameter(s) ({_listed(self.names)}) are "
                              "taken one sample at a time: exact, but slower", RuntimeWarning, stacklevel=4)
            else:
                self.vectorised = True
                return self._add(sums)
        self._add(self._one_at_a_time(x, v))

    def _add(self, sums: list[Tensor]) -> None:
        for slot, total in zip(self.names, sums):
            self.totals[slot].add_(total)

    def _vectorised(self, x: Inputs, v: Tensor) -> list[Tensor]:
        aliases = _aliases(self.model)  # every name of a parameter shared by two modules is replaced together
        names = [aliases[id(self.params[slot])] for slot in self.names]
        values = [self.params[slot].detach() for slot in self.names]
        wrapper = _Forward(self.model, self.forward)

        def contracted(params: list[Tensor], xi: Inputs, vi: Tensor) -> Tensor:
            replaced = {"model." + n: p for group, p in zip(names, params) for n in group}
            out = functional_call(wrapper, replaced, (model_inputs.one(xi),), tie_weights=False)
            return (out[0] * vi).sum()

        sums = [torch.zeros_like(p) for p in values]
        per_sample_grad = vmap(grad(contracted), in_dims=(None, 0, 0))
        # attention's fused kernels have no batching rule (vmap would loop over the samples in them): its math
        # form is made of batched matrix products; any other op without a rule is looped over, silently
        with warnings.catch_warnings(), sdpa_kernel(SDPBackend.MATH):
            warnings.filterwarnings("ignore", message="There is a performance drop because we have not yet")
            for k in range(v.shape[0]):
                for total, g in zip(sums, per_sample_grad(values, x, v[k])):
                    total.add_(self.power(g).sum(0))
        return sums

    def _one_at_a_time(self, x: Inputs, v: Tensor) -> list[Tensor]:
        params = [self.params[slot] for slot in self.names]
        sums = [torch.zeros_like(p) for p in params]
        for i in range(v.shape[1]):
            with torch.enable_grad():
                out = self.forward(model_inputs.take(x, i, i + 1))[0]
            for k in range(v.shape[0]):
                grads = torch.autograd.grad(out, params, v[k, i], retain_graph=k + 1 < v.shape[0], allow_unused=True)
                for total, g in zip(sums, grads):
                    if g is not None:  # (a parameter this sample does not reach has a zero gradient)
                        total.add_(self.power(g))
        return sums


class _Forward(nn.Module):
    """Wraps a user forward function so that torch.func can re-parametrise the model it closes over."""

    def __init__(self, model: nn.Module, fn: Callable[[Inputs], Tensor]):
        super().__init__()
        self.model = model
        self._fn = (fn,)  # a tuple, so that a module passed as `fn` is not registered a second time

    def forward(self, x: Inputs) -> Tensor:  # noqa: D102
        return self._fn[0](x)


def _aliases(model: nn.Module) -> dict[int, list[str]]:
    """For each parameter, one name per module that holds it (a module used twice is one module: replacing its
    attribute under both of its names would restore the wrong tensor afterwards)."""
    names: dict[int, list[str]] = {}
    for prefix, module in model.named_modules():
        for name, p in module.named_parameters(recurse=False):
            names.setdefault(id(p), []).append(f"{prefix}.{name}" if prefix else name)
    return names


def _listed(names: dict[int, str], most: int = 4) -> str:
    shown = list(names.values())[:most]
    return ", ".join(shown) + (f", and {len(names) - most} more" if len(names) > most else "")
