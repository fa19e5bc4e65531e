"""Networks of the papers' benchmarks, the multi-head wrapper, and their initialisation."""
from __future__ import annotations

from typing import Callable, Sequence

import torch
from torch import Tensor, nn

from clreg.models.network import ImageNetwork, Network
from clreg.models.vgg import CONFIGS as VGG_CONFIGS, VGG

NETWORKS = ("mlp", "cifar-cnn", *VGG_CONFIGS)
DEFAULT_WIDTHS = {"mlp": [2000, 2000], "cifar-cnn": [32, 64, 512],
                  **{name: list(dense) for name, (_, dense) in VGG_CONFIGS.items()}}


class MLP(Network):
    """Fully connected ReLU network: in → hidden[0] → ... → hidden[-1] (→ out, unless `out_features` is
    None: then it is a body for per-task heads)."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int | None, bias_init: float = 0.1):
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        if out_features is not None:
            layers.append(nn.Linear(widths[-1], out_features))
        super().__init__(*layers)
        self.bias_init, self.out_features = bias_init, widths[-1] if out_features is None else out_features
        self.reset_parameters()

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return super().forward(x.flatten(1))

    def initialize(self, module: nn.Module, generator: torch.Generator | None = None,
                   names: set[str] | None = None) -> None:
        """Glorot-uniform weights, constant biases (0.1 as in docs/algorithms.md §6)."""
        glorot_init(module, self.bias_init, generator, names)


class CifarNet(ImageNetwork):
    """docs/algorithms.md §6's CIFAR network: conv32-conv32-pool-drop.25-conv64-conv64-pool-drop.25-dense512-drop.5
    (3×3 'same' convolutions, ReLU), without the head unless `out_features` is given.

    `widths` = (channels of the first stage, of the second stage, dense units). Weights are kept in
    channels-last memory format, the faster layout for CPU convolutions.
    """

    def __init__(self, in_shape: Sequence[int], widths: Sequence[int] = (32, 64, 512),
                 out_features: int | None = None, bias_init: float = 0.0):
        if len(in_shape) != 3 or in_shape[1] < 4 or in_shape[2] < 4:
            raise ValueError(f"the CIFAR network needs image inputs (channels, height >= 4, width >= 4), got {tuple(in_shape)}")
        if len(widths) != 3:
            raise ValueError(f"the CIFAR network takes 3 widths (conv stage 1, conv stage 2, dense), got {list(widths)}")
        channels, height, width = in_shape
        first, second, dense = widths
        layers: list[nn.Module] = []
        for c_in, c_out in ((channels, first), (first, second)):
            layers += [nn.Conv2d(c_in, c_out, 3, padding=1), nn.ReLU(), nn.Conv2d(c_out, c_out, 3, padding=1),
                       nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25)]
        flat = second * (height // 4) * (width // 4)
        layers += [nn.Flatten(), nn.Linear(flat, dense), nn.ReLU(), nn.Dropout(0.5)]
        if out_features is not None:
            layers.append(nn.Linear(dense, out_features))
        super().__init__(*layers)
        self.bias_init, self.out_features = bias_init, dense if out_features is None else out_features
        self.reset_parameters()
        self.to(memory_format=torch.channels_last)

    def initialize(self, module: nn.Module, generator: torch.Generator | None = None,
                   names: set[str] | None = None) -> None:
        """Glorot-uniform weights, zero biases (docs/algorithms.md §6)."""
        glorot_init(module, self.bias_init, generator, names)


class MultiHead(nn.Module):
    """Any body plus one head per task; `model(x, task)` routes the batch through head `task`.

    `task` is an int (the whole batch belongs to one task) or a tensor of task ids, one per sample.
    Parameters are named `body.*` and `heads.<t>.*`; pass `heads=("heads",)` to the Regularizer so
    that heads are neither regularised nor re-initialised.
    """

    def __init__(self, body: nn.Module, heads: Sequence[nn.Module]):
        super().__init__()
        self.body, self.heads = body, nn.ModuleList(heads)

    def forward(self, x: Tensor, task: int | Tensor) -> Tensor:  # noqa: D102
        features = self.body(x)
        if not torch.is_tensor(task):
            return self.heads[self._checked(task)](features)
        if task.shape != (len(x),):
            raise ValueError(f"task ids must be one per sample, shape ({len(x)},), got {tuple(task.shape)}")
        tasks = task.unique().tolist()
        outputs = [self.heads[self._checked(t)](features[task == t]) for t in tasks]
        if len({o.shape[1] for o in outputs}) > 1:
            raise ValueError("a batch mixing tasks needs heads of one size")
        out = features.new_empty(len(x), outputs[0].shape[1])
        for t, o in zip(tasks, outputs):
            out[task == t] = o
        return out

    def _checked(self, task: int) -> int:
        if not 0 <= task < len(self.heads):
            raise ValueError(f"task id {task} out of range: the model has {len(self.heads)} heads (0..{len(self.heads) - 1})")
        return int(task)


def task_forward(model: nn.Module, task: int) -> Callable[[Tensor], Tensor]:
    """x → logits of `task`: through head `task` of a MultiHead, else the model itself."""
    if isinstance(model, MultiHead):
        return lambda x: model(x, task)
    return model


def build_model(network: str, in_shape: Sequence[int], widths: Sequence[int], classes: Sequence[int] | int,
                generator: torch.Generator | None = None) -> nn.Module:
    """The benchmark's network: one shared head of `classes` outputs (int), or a MultiHead with one head
    per entry of `classes` (a list of head sizes). Weights Glorot-uniform, drawn from `generator`."""
    multi = not isinstance(classes, int)
    out = None if multi else classes
    if network == "mlp":
        features = 1
        for d in in_shape:
            features *= d
        body = MLP(features, widths, out)
    elif network == "cifar-cnn":
        body = CifarNet(in_shape, widths, out)
    elif network in VGG_CONFIGS:
        body = VGG(network, in_shape, widths, out)
    else:
        raise ValueError(f"unknown network {network!r}; choose one of: {', '.join(NETWORKS)}")
    body.initialize(body, generator)
    if not multi:
        return body
    heads = [nn.Linear(body.out_features, k) for k in classes]
    model = MultiHead(body, heads)
    body.initialize(model.heads, generator)
    return model


def parameter_count(network: str, in_shape: Sequence[int], widths: Sequence[int], classes: Sequence[int] | int) -> int:
    """The number of parameters `build_model` would make, counted on the meta device (nothing allocated)."""
    with torch.device("meta"):
        return sum(p.numel() for p in build_model(network, in_shape, widths, classes).parameters())


def reinitialize(model: nn.Module, names: set[str], generator: torch.Generator | None = None) -> None:
    """Re-draw the weights named in `names` (the shared ones), keeping the network's bias constant."""
    body = model.body if isinstance(model, MultiHead) else model
    prefix = "body." if isinstance(model, MultiHead) else ""
    body.initialize(body, generator, names={n[len(prefix):] for n in names if n.startswith(prefix)})


@torch.no_grad()
def glorot_init(model: nn.Module, bias: float = 0.0, generator: torch.Generator | None = None,
                names: set[str] | None = None) -> None:
    """Glorot-uniform init of every Linear/Conv weight (optionally only those in `names`), biases = `bias`."""
    for module_name, m in model.named_modules():
        if not isinstance(m, (nn.Linear, nn.Conv1d, nn.Conv2d, nn.Conv3d)):
            continue
        if names is not None and f"{module_name}.weight" not in names:
            continue
        fan_in = m.weight[0].numel()
        fan_out = m.weight.shape[0] * m.weight[0][0].numel()
        bound = (6.0 / (fan_in + fan_out)) ** 0.5
        if generator is None or generator.device == m.weight.device:
            m.weight.uniform_(-bound, bound, generator=generator)
        else:  # drawn where the generator is: the same weights on every device
            m.weight.copy_(torch.empty(m.weight.shape, dtype=m.weight.dtype, device=generator.device)
                           .uniform_(-bound, bound, generator=generator))
        if m.bias is not None:
            m.bias.fill_(bias)
