"""K models of one architecture as one: parameters stacked along a leading dimension, one batched pass.

`StackedNetwork(models)` copies the members' parameters into stacked tensors ([K, ...] each) and turns
every member's parameters into views of its slice (`torch.utils.swap_tensors`, so the members' Parameter
objects, and everything holding them, stay valid). A member is then still an ordinary nn.Module: its
optimiser, Regularizer, importance measures and evaluation run on it unchanged, and write straight into
the stack. `forward(x)` runs all K members on their own inputs x[k] at once: a Linear is one `baddbmm`,
a Conv2d one grouped convolution over the K members' channels.

Dropout keeps every member's own random stream: member k's masks are drawn, layer by layer, as its
model alone would draw them (`torch.nn.functional.dropout` on a tensor of ones of the activation's shape
and memory format, under member k's random state), so the K runs equal the same runs trained alone.

The architectures: a Sequential of Linear, Conv2d, ReLU, MaxPool2d, Dropout and Flatten (clreg's MLP and
CIFAR network), alone or as the body of a MultiHead.
"""
from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from clreg.models.build import MLP, MultiHead

LAYERS = (nn.Linear, nn.Conv2d, nn.ReLU, nn.MaxPool2d, nn.Dropout, nn.Flatten)


def check_stackable(model: nn.Module) -> None:
    """Raise ValueError unless `model` is made of the layers StackedNetwork runs batched."""
    body = model.body if isinstance(model, MultiHead) else model
    if not isinstance(body, nn.Sequential):
        raise ValueError(f"a vectorised run needs a Sequential network (mlp, cifar-cnn), not {type(body).__name__}")
    other = [type(m).__name__ for m in body if not isinstance(m, LAYERS)]
    if other:
        raise ValueError(f"a vectorised run cannot batch the layer(s) {', '.join(sorted(set(other)))}; it runs "
                         f"{', '.join(layer.__name__ for layer in LAYERS)} (the mlp and cifar-cnn networks)")
    if isinstance(model, MultiHead) and not all(isinstance(h, nn.Linear) for h in model.heads):
        raise ValueError("a vectorised run needs Linear heads")


class RandomStates:
    """Each member's state of torch's default generators (CPU, and the CUDA device's), swapped in while code
    runs for that member: member k draws exactly the numbers its run alone would draw."""

    def __init__(self, device: torch.device):
        self.device = device
        self.states: list[tuple[Tensor, Tensor | None]] = []

    def capture(self) -> None:
        """Append the current global state as the next member's."""
        self.states.append(self._get())

    def _get(self) -> tuple[Tensor, Tensor | None]:
        cuda = torch.cuda.get_rng_state(self.device) if self.device.type == "cuda" else None
        return torch.get_rng_state(), cuda

    def _set(self, state: tuple[Tensor, Tensor | None]) -> None:
        torch.set_rng_state(state[0])
        if state[1] is not None:
            torch.cuda.set_rng_state(state[1], self.device)

    @contextmanager
    def of(self, member: int) -> Iterator[None]:
        """Run the block with member `member`'s random state; keep what the block leaves."""
        outside = self._get()
        self._set(self.states[member])
        try:
            yield
        finally:
            self.states[member] = self._get()
            self._set(outside)


class StackedNetwork:
    """The K member models' parameters as stacked leaf tensors, and their batched forward pass."""

    def __init__(self, models: Sequence[nn.Module], rng: RandomStates):
        if not models:
            raise ValueError("no models to stack")
        for model in models:
            check_stackable(model)
        self.models, self.rng, self.size = list(models), rng, len(models)
        self.names = [n for n, _ in models[0].named_parameters()]
        shapes = [[tuple(p.shape) for _, p in m.named_parameters()] for m in models]
        if any(s != shapes[0] for s in shapes):
            raise ValueError("models of a vectorised run must have the same parameters and shapes")
        self.member_params = {name: [dict(m.named_parameters())[name] for m in models] for name in self.names}
        self.params: dict[str, Tensor] = {name: self._stack(name) for name in self.names}
        self.dropout_format: dict[int, torch.memory_format] = {}

    def _stack(self, name: str) -> Tensor:
        """The members' parameter `name` as one [K, ...] leaf in their memory format; each member's
        Parameter becomes a view of its slice."""
        members = self.member_params[name]
        first = members[0]
        channels_last = first.dim() == 4 and first.is_contiguous(memory_format=torch.channels_last) \
            and not first.is_contiguous()
        if channels_last:  # [K, out, kh, kw, in] in memory, seen as [K, out, in, kh, kw]
            o, i, h, w = first.shape
            stacked = torch.empty((len(members), o, h, w, i), dtype=first.dtype, device=first.device).permute(0, 1, 4, 2, 3)
        else:
            stacked = torch.empty((len(members), *first.shape), dtype=first.dtype, device=first.device)
        with torch.no_grad():
            for k, p in enumerate(members):
                stacked[k].copy_(p)
        base = stacked.detach()
        for k, p in enumerate(members):
            torch.utils.swap_tensors(p, nn.Parameter(base[k], requires_grad=p.requires_grad))
        return stacked.requires_grad_()

    def gradients(self) -> None:
        """Point every member parameter's `.grad` at its slice of the stacked gradient (after backward)."""
        for name, stacked in self.params.items():
            for p, grad in zip(self.member_params[name], stacked.grad if stacked.grad is not None else [None] * self.size):
                p.grad = grad

    def zero_grad(self) -> None:
        """Clear the stacked and the members' gradients."""
        for stacked in self.params.values():
            stacked.grad = None
        for model in self.models:
            for p in model.parameters():
                p.grad = None

    def probe(self, x: Tensor) -> None:
        """Find the memory format each Dropout sees in a member's own forward pass (one sample of the member
        inputs `x`, eval mode: nothing is drawn), so that the stacked pass draws the same masks."""
        model, found = self.models[0], {}
        hooks = [m.register_forward_pre_hook(lambda m, args, i=i: found.__setitem__(i, _format(args[0])))
                 for i, m in enumerate(self._body()) if isinstance(m, nn.Dropout)]
        was_training = model.training
        model.eval()
        try:
            with torch.no_grad():
                model(x[:2], 0) if isinstance(model, MultiHead) else model(x[:2])
        finally:
            model.train(was_training)
            for hook in hooks:
                hook.remove()
        self.dropout_format = found

    def _body(self) -> nn.Sequential:
        model = self.models[0]
        return model.body if isinstance(model, MultiHead) else model

    def forward(self, x: Tensor, task: int = 0, dropout: Sequence[bool] | None = None) -> Tensor:
        """Logits [K, B, classes] of member k on x[k] ([K, B, ...]), through head `task` of a MultiHead.
        `dropout[k]` False skips member k's dropout (default: dropout where the members are in train mode)."""
        active = [m.training for m in self.models] if dropout is None else list(dropout)
        prefix = "body." if isinstance(self.models[0], MultiHead) else ""
        if isinstance(self._body(), MLP):
            x = x.flatten(2)
        grouped = False  # activations as [B, K·C, H, W] (convolutions) or [K, B, ...]
        for i, layer in enumerate(self._body()):
            name = f"{prefix}{i}"
            if isinstance(layer, nn.Linear):
                if grouped:
                    x, grouped = _ungroup(x, self.size), False
                x = self._linear(x, name)
            elif isinstance(layer, nn.Conv2d):
                if not grouped:
                    x, grouped = _group(x), True
                x = self._conv(x, layer, name)
            elif isinstance(layer, nn.Flatten):
                x, grouped = (_ungroup(x, self.size) if grouped else x.flatten(2)), False
            elif isinstance(layer, nn.Dropout):
                x = self._dropout(x, layer.p, i, active, grouped)
            else:  # ReLU, MaxPool2d: one op over every member
                x = layer(x) if grouped or isinstance(layer, nn.ReLU) else _per_sample(layer, x)
        if grouped:
            x = _ungroup(x, self.size)
        if isinstance(self.models[0], MultiHead):
            x = self._linear(x, f"heads.{task}")
        return x

    __call__ = forward

    def _linear(self, x: Tensor, name: str) -> Tensor:
        return StackedLinear.apply(x, self.params[f"{name}.weight"], self.params.get(f"{name}.bias"))

    def _conv(self, x: Tensor, layer: nn.Conv2d, name: str) -> Tensor:
        weight, bias = self.params[f"{name}.weight"], self.params.get(f"{name}.bias")
        k = self.size
        return F.conv2d(x, weight.reshape(k * weight.shape[1], *weight.shape[2:]),
                        None if bias is None else bias.reshape(-1), layer.stride, layer.padding, layer.dilation,
                        groups=k * layer.groups)

    def _dropout(self, x: Tensor, p: float, index: int, active: list[bool], grouped: bool) -> Tensor:
        if p == 0 or not any(active):
            return x
        shape = (x.shape[0], x.shape[1] // self.size, *x.shape[2:]) if grouped else x.shape[1:]
        layout = self.dropout_format.get(index, torch.contiguous_format)
        masks = []
        for k in range(self.size):
            if not active[k]:
                masks.append(torch.ones(shape, dtype=x.dtype, device=x.device))
                continue
            with self.rng.of(k):
                ones = torch.ones(shape, dtype=x.dtype, device=x.device).contiguous(memory_format=layout)
                masks.append(F.dropout(ones, p, True))  # = the noise bernoulli(1 − p) / (1 − p) of its run alone
        return x * (torch.cat(masks, dim=1) if grouped else torch.stack(masks))


class StackedLinear(torch.autograd.Function):
    """K Linear layers at once, x [K, B, in] → [K, B, out], taking each member's matrix products as `F.linear`
    takes them alone: forward x·Wᵀ + b, backward gᵀ·x for the weight (batched autograd would take (xᵀ·g)ᵀ,
    which rounds differently, and Adam turns such rounding into steps) and g·W for the input. On the CPU,
    where a batched product splits its work over the threads differently from K single ones, the K products
    are taken one by one (the same arithmetic as K runs, bit for bit); elsewhere as one batched product."""

    @staticmethod
    def forward(ctx, x: Tensor, weight: Tensor, bias: Tensor | None) -> Tensor:  # noqa: D102
        kind = x.device.type
        if torch.is_autocast_enabled(kind):  # as autocast casts F.linear's operands (bf16)
            dtype = torch.get_autocast_dtype(kind)
            x, weight = x.to(dtype), weight.to(dtype)
            bias = None if bias is None else bias.to(dtype)
        ctx.save_for_backward(x, weight)
        ctx.has_bias = bias is not None
        if kind == "cpu":  # F.linear is addmm(b, x, Wᵀ) (mm without a bias)
            out = x.new_empty((*x.shape[:2], weight.shape[1]))
            for k in range(len(x)):
                if bias is None:
                    torch.mm(x[k], weight[k].t(), out=out[k])
                else:
                    torch.addmm(bias[k], x[k], weight[k].t(), out=out[k])
            return out
        if bias is None:
            return torch.bmm(x, weight.transpose(1, 2))
        return torch.baddbmm(bias.unsqueeze(1), x, weight.transpose(1, 2))

    @staticmethod
    def backward(ctx, grad: Tensor):  # noqa: D102
        x, weight = ctx.saved_tensors
        grad = grad.to(x.dtype)
        wants_x, wants_weight, wants_bias = ctx.needs_input_grad
        if x.device.type == "cpu":
            grad_x = torch.empty_like(x) if wants_x else None
            grad_weight = torch.empty_like(weight) if wants_weight else None
            grad_bias = grad.new_empty((len(x), grad.shape[2])) if ctx.has_bias and wants_bias else None
            for k in range(len(x)):
                if wants_x:
                    torch.mm(grad[k], weight[k], out=grad_x[k])
                if wants_weight:
                    torch.mm(grad[k].t(), x[k], out=grad_weight[k])
                if grad_bias is not None:
                    torch.sum(grad[k], 0, out=grad_bias[k])
            return grad_x, grad_weight, grad_bias
        grad_x = torch.bmm(grad, weight) if wants_x else None
        grad_weight = torch.bmm(grad.transpose(1, 2), x) if wants_weight else None
        grad_bias = grad.sum(1) if ctx.has_bias and wants_bias else None
        return grad_x, grad_weight, grad_bias


def _format(x: Tensor) -> torch.memory_format:
    if x.dim() == 4 and x.is_contiguous(memory_format=torch.channels_last) and not x.is_contiguous():
        return torch.channels_last
    return torch.contiguous_format


def _group(x: Tensor) -> Tensor:
    """[K, B, C, H, W] → [B, K·C, H, W]."""
    k, b = x.shape[:2]
    return x.transpose(0, 1).reshape(b, k * x.shape[2], *x.shape[3:])


def _ungroup(x: Tensor, k: int) -> Tensor:
    """[B, K·C, H, W] → [K, B, C·H·W] (each member's features in its own C, H, W order)."""
    b = x.shape[0]
    return x.reshape(b, k, -1).transpose(0, 1)


def _per_sample(layer: nn.Module, x: Tensor) -> Tensor:
    """A layer applied to [K, B, ...] as to K·B samples."""
    return layer(x.flatten(0, 1)).unflatten(0, x.shape[:2])
