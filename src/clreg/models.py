"""Networks of the papers' benchmarks and their initialisation."""
from __future__ import annotations

from typing import Sequence

import torch
from torch import nn


class MLP(nn.Sequential):
    """Fully connected ReLU network: in → hidden[0] → ... → hidden[-1] → out (one shared head)."""

    def __init__(self, in_features: int, hidden: Sequence[int], out_features: int, bias_init: float = 0.1):
        widths = [in_features, *hidden]
        layers: list[nn.Module] = []
        for fan_in, fan_out in zip(widths[:-1], widths[1:]):
            layers += [nn.Linear(fan_in, fan_out), nn.ReLU()]
        layers.append(nn.Linear(widths[-1], out_features))
        super().__init__(*layers)
        self.bias_init = bias_init
        self.reset_parameters()

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Glorot-uniform weights, constant biases (0.1 as in SPEC §5)."""
        glorot_init(self, self.bias_init, generator)


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
        m.weight.uniform_(-bound, bound, generator=generator)
        if m.bias is not None:
            m.bias.fill_(bias)


def parse_widths(text: str) -> list[int]:
    """'2000,2000' → [2000, 2000]; raises ValueError with the allowed form otherwise."""
    try:
        widths = [int(part) for part in text.split(",")]
    except ValueError:
        widths = []
    if not widths or any(w < 1 for w in widths):
        raise ValueError(f"hidden widths must be positive integers separated by commas (e.g. 2000,2000), got {text!r}")
    return widths
