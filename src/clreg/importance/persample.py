"""Per-sample gradient statistics without per-sample backward passes.

For inputs x_1..x_n and per-sample output cotangents v_xk with weights w_xk (k = 1..K, e.g. one per
label for the Fisher), this computes for each parameter

    Σ_x Σ_k w_xk · h(J_θ(x)ᵀ v_xk),   h = square or abs,

that is, a weighted sum of a function of *per-sample* gradients:
- Linear on (n, in) inputs: the per-sample gradient is the outer product δ_x ⊗ a_x, so
  Σ_x Σ_k w_xk h(δ_xk ⊗ a_x) = (Σ_k w_k ⊙ h(δ_k))ᵀ h(a): one matrix product per layer, and the
  backward pass only runs down to the layer outputs (no weight gradients at all);
- Conv2d: per-sample gradients as one batched product per kernel offset and cotangent, on strided copies
  of the input (the numbers unfold would give); Linear on inputs with extra dimensions likewise, directly;
- any other parameter: `torch.func` (vmap of grad over samples), chunked.
Samples are processed in chunks that keep the working memory under a budget.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.func import functional_call, grad, vmap

from ..device import memory_budget as device_budget

# (logits (n, C), labels (n,) or None) -> cotangents (K, n, C) and weights (K, n)
Cotangents = Callable[[Tensor, Tensor | None], tuple[Tensor, Tensor]]


def _power(t: Tensor, power: str) -> Tensor:
    return t.square() if power == "square" else t.abs()


def _conv_padding(m: nn.Conv2d) -> tuple[int, int] | None:
    """Explicit symmetric padding of a Conv2d, or None where unfold cannot express it."""
    if m.padding_mode != "zeros" or m.groups != 1:
        return None
    if m.padding == "valid":
        return (0, 0)
    if m.padding == "same":
        total = [d * (k - 1) for d, k in zip(m.dilation, m.kernel_size)]
        return None if any(t % 2 for t in total) else (total[0] // 2, total[1] // 2)
    return tuple(m.padding)


class _Layer:
    """A Linear or Conv2d whose wanted parameters get the closed-form statistics."""

    def __init__(self, module: nn.Module, slots: dict[str, int]):
        self.module, self.slots = module, slots  # slots: "weight"/"bias" -> index into the result list
        self.input: Tensor | None = None
        self.output: Tensor | None = None
        self.recording = True  # off while the torch.func fallback re-runs the model
        self.calls = 0
        self.handle = module.register_forward_hook(self._hook)

    def _hook(self, module, args, output):
        if self.recording:
            self.input, self.output = args[0].detach(), output
            self.calls += 1

    def per_sample_floats(self) -> int:
        """Floats per sample this layer needs while a chunk is processed."""
        n = self.input.shape[0]
        floats = (self.input.numel() + 3 * self.output.numel()) // n
        if not self.factorised:
            w = self.module.weight
            floats += 2 * w.numel()
            if isinstance(self.module, nn.Conv2d):
                floats += self.output[0, 0].numel() * w[0].numel()  # unfolded input
        return floats

    @property
    def factorised(self) -> bool:
        return isinstance(self.module, nn.Linear) and self.input.dim() == 2

    def unfolded_input(self) -> Tensor | list[Tensor]:
        """The layer's input as the weight sees it: Linear, a (n, fan_in, positions) view; Conv2d, per kernel
        offset the (n, positions, in_channels) values that each output position multiplies there (the same
        numbers as unfold's, laid out so that building them is a plain strided copy, ~4× faster than im2col)."""
        m, a = self.module, self.input
        if isinstance(m, nn.Linear):
            return a.reshape(a.shape[0], -1, a.shape[-1]).transpose(1, 2)
        (ph, pw), (sh, sw), (dh, dw) = _conv_padding(m), m.stride, m.dilation
        n, channels, rows, cols = self.output.shape[0], a.shape[1], self.output.shape[2], self.output.shape[3]
        padded = F.pad(a.permute(0, 2, 3, 1), (0, 0, pw, pw, ph, ph))  # (n, H, W, C) with zero borders
        kh, kw = m.kernel_size
        return [padded[:, i * dh:i * dh + sh * (rows - 1) + 1:sh, j * dw:j * dw + sw * (cols - 1) + 1:sw, :]
                .reshape(n, rows * cols, channels) for i in range(kh) for j in range(kw)]


class _Accumulator:
    """Runs one chunk of samples through the model and adds its statistics to `totals`."""

    def __init__(self, layers: list[_Layer], fallback: dict[int, str], model: nn.Module,
                 forward: Callable[[Tensor], Tensor], power: str, params: list[Tensor], totals: list[Tensor]):
        self.layers, self.fallback, self.model, self.params = layers, fallback, model, params
        self.forward, self.power, self.totals = forward, power, totals

    def run(self, x: Tensor, labels: Tensor | None, cotangents: Cotangents) -> None:
        for layer in self.layers:
            layer.calls = 0
        with torch.enable_grad():
            logits = self.forward(x)
        for layer in self.layers:
            if layer.calls != 1:  # the closed forms assume one application per forward pass
                raise ValueError(f"{type(layer.module).__name__} {layer.module!r} ran {layer.calls} times in one "
                                 "forward pass; per-sample statistics support each Linear/Conv2d running exactly once")
        v, w = cotangents(logits.detach(), labels)
        # fold the weights into the cotangents: w·δ² = (√w·δ)², w·abs(δ) = abs(w·δ) for w ≥ 0
        v = v * (w.sqrt() if self.power == "square" else w).unsqueeze(-1).to(v.dtype)
        summed = [torch.zeros_like(layer.output) for layer in self.layers if layer.factorised]
        unfolded = {id(layer): layer.unfolded_input() for layer in self.layers if not layer.factorised}
        outputs = [layer.output for layer in self.layers]
        for k in range(v.shape[0]):
            deltas = torch.autograd.grad(logits, outputs, v[k], retain_graph=True) if outputs else []
            factorised = iter(summed)
            for layer, delta in zip(self.layers, deltas):
                if not layer.factorised:
                    self._add_positional(layer, delta, unfolded[id(layer)])
                elif self.power == "square":
                    next(factorised).addcmul_(delta, delta)
                else:
                    next(factorised).add_(delta.abs())
            if self.fallback:
                self._add_fallback(x, v[k])
        for layer, s in zip([layer for layer in self.layers if layer.factorised], summed):
            self._add(layer, "weight", lambda: s.t() @ _power(layer.input, self.power))
            self._add(layer, "bias", lambda: s.sum(0))
        del logits, outputs

    def _add(self, layer: _Layer, kind: str, statistic: Callable[[], Tensor]) -> None:
        if kind in layer.slots:
            self.totals[layer.slots[kind]].add_(statistic())

    def _add_positional(self, layer: _Layer, delta: Tensor, unfolded: Tensor | list[Tensor]) -> None:
        n = delta.shape[0]
        if isinstance(layer.module, nn.Linear):
            delta = delta.reshape(n, -1, delta.shape[-1]).transpose(1, 2)  # (n, out, positions)
        else:
            delta = delta.permute(0, 2, 3, 1).reshape(n, -1, delta.shape[1]).transpose(1, 2)  # free if channels-last
        if "weight" in layer.slots:
            if isinstance(unfolded, list):  # Conv2d: (n, out, in, kernel offsets), the weight's own layout
                per_sample = torch.stack([torch.bmm(delta, patch) for patch in unfolded], dim=-1)
            else:
                per_sample = torch.bmm(delta, unfolded.transpose(1, 2))  # (n, out, fan_in)
            total = self.totals[layer.slots["weight"]]
            total.add_(_power(per_sample, self.power).sum(0).view_as(total))
        if "bias" in layer.slots:
            self.totals[layer.slots["bias"]].add_(_power(delta.sum(2), self.power).sum(0))

    def _add_fallback(self, x: Tensor, v: Tensor) -> None:
        names = list(self.fallback.values())
        values = [self.params[slot].detach() for slot in self.fallback]
        wrapper = _Forward(self.model, self.forward)

        def contracted(params: list[Tensor], xi: Tensor, vi: Tensor) -> Tensor:
            out = functional_call(wrapper, {"model." + n: p for n, p in zip(names, params)}, (xi[None],))
            return (out[0] * vi).sum()

        for layer in self.layers:
            layer.recording = False
        try:
            per_sample = vmap(grad(contracted), in_dims=(None, 0, 0))(values, x, v)
        finally:
            for layer in self.layers:
                layer.recording = True
        for slot, g in zip(self.fallback, per_sample):
            self.totals[slot].add_(_power(g, self.power).sum(0))


class _Forward(nn.Module):
    """Wraps a user forward function so that torch.func can re-parametrise the model it closes over."""

    def __init__(self, model: nn.Module, fn: Callable[[Tensor], Tensor]):
        super().__init__()
        self.model = model
        self._fn = (fn,)  # a tuple, so that a module passed as `fn` is not registered a second time

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return self._fn[0](x)


def _plan(model: nn.Module, params: list[Tensor]) -> tuple[list[_Layer], dict[int, str]]:
    """Assign each wanted parameter to a closed-form layer or to the torch.func fallback."""
    index = {id(p): i for i, p in enumerate(params)}
    owners: dict[int, int] = {}
    for m in model.modules():
        for p in m.parameters(recurse=False):
            owners[id(p)] = owners.get(id(p), 0) + 1
    names = {id(p): n for n, p in model.named_parameters(remove_duplicate=False)}
    missing = [i for i, p in enumerate(params) if id(p) not in names]
    if missing:
        raise ValueError(f"{len(missing)} of the parameters to measure do not belong to the model")
    layers, fallback = [], {}
    for m in model.modules():
        own = {kind: index[id(p)] for kind, p in m.named_parameters(recurse=False)
               if id(p) in index and owners[id(p)] == 1}
        closed_form = (isinstance(m, nn.Linear) or (isinstance(m, nn.Conv2d) and _conv_padding(m) is not None))
        if own and closed_form and set(own) <= {"weight", "bias"}:
            layers.append(_Layer(m, own))
        else:
            for kind, p in m.named_parameters(recurse=False):
                if id(p) in index:
                    fallback[index[id(p)]] = names[id(p)]
    return layers, fallback


def per_sample_statistics(model: nn.Module, params: list[Tensor], inputs: Tensor, cotangents: Cotangents,
                          power: str, labels: Tensor | None = None,
                          forward: Callable[[Tensor], Tensor] | None = None,
                          memory_budget: int | None = None) -> list[Tensor]:
    """Σ_x Σ_k w_xk · h(per-sample gradient), h = `power` ("square" or "abs"), per parameter.

    `cotangents(logits, labels)` gives the output cotangents v (K, n, C) and weights w (K, n) for a
    chunk; the per-sample gradient for (x, k) is J_θ(x)ᵀ v_xk. `memory_budget` (bytes; default 1 GiB on the
    CPU, half the free memory of a GPU) bounds the
    chunk of samples processed at once. The model should be in eval mode.
    """
    if power not in ("square", "abs"):
        raise ValueError(f"power must be 'square' or 'abs', got {power!r}")
    if inputs.shape[0] == 0:
        raise ValueError("per_sample_statistics needs at least one sample")
    forward = forward or model
    totals = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
    layers, fallback = _plan(model, params)
    try:
        accumulator = _Accumulator(layers, fallback, model, forward, power, params, totals)
        accumulator.run(inputs[:1], None if labels is None else labels[:1], cotangents)  # also sizes layers
        chunk = _chunk_size(accumulator, params, fallback, memory_budget or device_budget(inputs.device))
        for start in range(1, inputs.shape[0], chunk):
            stop = start + chunk
            accumulator.run(inputs[start:stop], None if labels is None else labels[start:stop], cotangents)
    finally:
        for layer in layers:
            layer.handle.remove()
            layer.input = layer.output = None
    return totals


def _chunk_size(accumulator: _Accumulator, params: list[Tensor], fallback: dict[int, str], budget: int) -> int:
    """Samples per chunk so that the working memory stays under `budget` bytes (after a 1-sample run)."""
    floats = sum(layer.per_sample_floats() for layer in accumulator.layers)
    floats += sum(3 * params[slot].numel() for slot in fallback)
    return max(1, budget // max(1, params[0].element_size() * floats))
