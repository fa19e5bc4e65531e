"""What clreg's built-in networks share: their own initialisation as a method, and channels-last images."""
from __future__ import annotations

import torch
from torch import Tensor, nn


class Network(nn.Sequential):
    """A built-in network. `initialize(module, generator, names)` applies the network's initialisation
    to `module`: the network itself, its task heads, or only the weights named in `names` (re-init)."""

    def reset_parameters(self, generator: torch.Generator | None = None) -> None:
        """Initialise every weight of the network."""
        self.initialize(self, generator)

    def initialize(self, module: nn.Module, generator: torch.Generator | None = None,
                   names: set[str] | None = None) -> None:
        """This network's initialisation of `module` (subclasses define it)."""
        raise NotImplementedError


class ImageNetwork(Network):
    """A convolutional network: weights (set by the subclass) and inputs in channels-last memory format,
    the faster layout for CPU convolutions."""

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return super().forward(x.contiguous(memory_format=torch.channels_last))
