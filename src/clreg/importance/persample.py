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
- any other parameter, and a Linear/Conv2d that does not run exactly once per forward pass (attention's output
  projection, which nn.MultiheadAttention applies functionally; a layer applied twice): `torch.func` (vmap of grad
  over samples), chunked.
Inputs are a tensor or a dict of tensors with a common sample dimension (a Hugging Face model's keyword inputs).
Samples are processed in chunks that keep the working memory under a budget.
"""
from __future__ import annotations

from typing import Callable

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clreg.core.device import memory_budget as device_budget
from clreg.importance import inputs as model_inputs
from clreg.importance.inputs import Inputs
from clreg.importance.fallback import FallbackGradients

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

    def __init__(self, module: nn.Module, slots: dict[str, int], names: dict[str, str]):
        self.module, self.slots = module, slots  # slots: "weight"/"bias" -> index into the result list
        self.names = names  # "weight"/"bias" -> the parameter's name in the model
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

    def __init__(self, layers: list[_Layer], fallback: FallbackGradients, forward: Callable[[Inputs], Tensor],
                 power: str, totals: list[Tensor]):
        self.layers, self.fallback, self.forward, self.power, self.totals = layers, fallback, forward, power, totals

    def run(self, x: Inputs, labels: Tensor | None, cotangents: Cotangents) -> None:
        for layer in self.layers:
            layer.calls = 0
        with torch.enable_grad():
            logits = self.forward(x)
        for layer in self.layers:
            if layer.calls != 1 or layer.input.shape[0] != len(logits):  # as the probe found: once, samples first
                raise ValueError(f"{type(layer.module).__name__} {layer.module!r} ran {layer.calls} times in one "
                                 "forward pass, or on inputs whose first dimension is not the samples', unlike in "
                                 "the first passes: the model's control flow depends on its inputs")
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
        if self.fallback.names:
            for layer in self.layers:
                layer.recording = False
            try:
                self.fallback.add(x, v)
            finally:
                for layer in self.layers:
                    layer.recording = True
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
            layers.append(_Layer(m, own, {kind: names[id(p)] for kind, p in m.named_parameters(recurse=False)}))
        else:
            for kind, p in m.named_parameters(recurse=False):
                if id(p) in index:
                    fallback[index[id(p)]] = names[id(p)]
    return layers, fallback


def _probe(layers: list[_Layer], fallback: dict[int, str], forward: Callable[[Inputs], Tensor], inputs: Inputs,
           n: int) -> list[_Layer]:
    """Run one sample, then two, through the model and hand to the torch.func fallback every layer whose closed
    form would not hold: one that did not run exactly once (one applied functionally, as attention's output
    projection is; one applied twice), or one whose input does not have the samples first (a sequence-first
    layout, whose first dimension stays the same when the number of samples changes). Gradients on, as in the
    real passes: a fast path that skips modules without them is not taken."""
    good = {id(layer): True for layer in layers}
    for size in (1, 2) if n > 1 else (1,):
        for layer in layers:
            layer.calls, layer.input = 0, None
        with torch.enable_grad():
            forward(model_inputs.take(inputs, 0, size))
        for layer in layers:
            good[id(layer)] &= layer.calls == 1 and layer.input.shape[0] == size
    kept = []
    for layer in layers:
        layer.input = layer.output = None
        if good[id(layer)]:
            kept.append(layer)
            continue
        layer.handle.remove()
        fallback.update({slot: layer.names[kind] for kind, slot in layer.slots.items()})
    return kept


def per_sample_statistics(model: nn.Module, params: list[Tensor], inputs: Inputs, cotangents: Cotangents,
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
    n = model_inputs.check_inputs(inputs)
    if n == 0:
        raise ValueError("per_sample_statistics needs at least one sample")
    forward = forward or _default_forward(model, inputs)
    totals = [torch.zeros_like(p, memory_format=torch.contiguous_format) for p in params]
    layers, fallback = _plan(model, params)
    try:
        layers = _probe(layers, fallback, forward, inputs, n)
        functional = FallbackGradients(model, forward, fallback, params, lambda g: _power(g, power), totals)
        accumulator = _Accumulator(layers, functional, forward, power, totals)
        accumulator.run(model_inputs.take(inputs, 0, 1), None if labels is None else labels[:1], cotangents)  # sizes layers
        chunk = _chunk_size(accumulator, params, fallback, memory_budget or device_budget(params[0].device))
        for start in range(1, n, chunk):
            stop = start + chunk
            accumulator.run(model_inputs.take(inputs, start, stop), None if labels is None else labels[start:stop],
                            cotangents)
    finally:
        for layer in layers:
            layer.handle.remove()
            layer.input = layer.output = None
    return totals


def _default_forward(model: nn.Module, inputs: Inputs) -> Callable[[Inputs], Tensor]:
    """model(x) for a tensor, model(**x) for a dict of keyword inputs; the result must be the logits."""
    def logits(x: Inputs) -> Tensor:
        out = model(x) if isinstance(x, Tensor) else model(**x)
        if not isinstance(out, Tensor):
            raise ValueError(f"{type(model).__name__} returns a {type(out).__name__}, not a tensor of logits: pass "
                             "forward=, e.g. forward=lambda x: model(**x).logits")
        return out
    return logits


def _chunk_size(accumulator: _Accumulator, params: list[Tensor], fallback: dict[int, str], budget: int) -> int:
    """Samples per chunk so that the working memory stays under `budget` bytes (after a 1-sample run)."""
    floats = sum(layer.per_sample_floats() for layer in accumulator.layers)
    floats += sum(3 * params[slot].numel() for slot in fallback)
    return max(1, budget // max(1, params[0].element_size() * floats))
