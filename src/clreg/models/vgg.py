"""The VGG-style networks of De Lange et al. (2019, "A continual learning survey"), used for Tiny ImageNet
in the paper's table 2: SMALL, BASE, WIDE and DEEP.

Every network is 3×3 'same' convolutions with ReLU, four 2×2 max-pools, then two fully connected ReLU
layers and the head(s): on 64×64 inputs the last feature map is 4×4. No batch norm, no dropout (their
default variants). Inputs are normalised inside the network with the ImageNet mean and standard deviation,
as their data pipeline does, so the benchmark's images stay in [0, 1]. Initialisation is theirs (torch-
vision's VGG): convolutions Kaiming-normal (fan-out, ReLU), linear layers N(0, 0.01), biases 0.

Parameters with a 10-way head on 64×64×3 inputs: SMALL 614,090; BASE 3,510,858; WIDE 8,963,466;
DEEP 6,646,154 (tests/test_vgg.py recounts them from the layer list).
"""
from __future__ import annotations

from typing import Sequence

import torch
from torch import Tensor, nn

from clreg.models.network import ImageNetwork

POOL = "M"
# conv channels per layer, POOL for a 2×2 max-pool; and the widths of the two dense layers
CONFIGS = {
    "vgg-small": ([64, POOL, 64, POOL, 64, 64, POOL, 128, 128, POOL], (128, 128)),
    "vgg-base": ([64, POOL, 64, POOL, 128, 128, POOL, 256, 256, POOL], (512, 512)),
    "vgg-wide": ([64, POOL, 128, POOL, 256, 256, POOL, 512, 512, POOL], (512, 512)),
    "vgg-deep": ([64, POOL, *[64] * 6, POOL, *[128] * 6, POOL, *[256] * 6, POOL], (512, 512)),
}
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


class Normalize(nn.Module):
    """(x − mean) / std per channel; mean and std are buffers, not parameters."""

    def __init__(self, mean: Sequence[float], std: Sequence[float]):
        super().__init__()
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1))

    def forward(self, x: Tensor) -> Tensor:  # noqa: D102
        return (x - self.mean) / self.std


class VGG(ImageNetwork):
    """One of CONFIGS without its head (unless `out_features` is given); `dense` overrides the two dense
    widths. Channels-last weights, the faster layout for CPU convolutions."""

    def __init__(self, name: str, in_shape: Sequence[int], dense: Sequence[int] | None = None,
                 out_features: int | None = None):
        if name not in CONFIGS:
            raise ValueError(f"unknown VGG {name!r}; choose one of: {', '.join(CONFIGS)}")
        layers_spec, default_dense = CONFIGS[name]
        dense = tuple(dense or default_dense)
        if len(dense) != 2:
            raise ValueError(f"{name} takes 2 widths (its two dense layers), got {list(dense)}")
        channels, height, width = _image_shape(name, in_shape, layers_spec.count(POOL))
        layers: list[nn.Module] = [Normalize(IMAGENET_MEAN, IMAGENET_STD)] if channels == 3 else []
        for item in layers_spec:
            if item == POOL:
                layers.append(nn.MaxPool2d(2, 2))
                height, width = height // 2, width // 2
            else:
                layers += [nn.Conv2d(channels, item, 3, padding=1), nn.ReLU()]
                channels = item
        layers += [nn.Flatten(), nn.Linear(channels * height * width, dense[0]), nn.ReLU(),
                   nn.Linear(dense[0], dense[1]), nn.ReLU()]
        if out_features is not None:
            layers.append(nn.Linear(dense[1], out_features))
        super().__init__(*layers)
        self.out_features = dense[1] if out_features is None else out_features
        self.bias_init = 0.0
        self.reset_parameters()
        self.to(memory_format=torch.channels_last)

    def initialize(self, module: nn.Module, generator: torch.Generator | None = None,
                   names: set[str] | None = None) -> None:
        """Their initialisation: convolutions Kaiming-normal (fan-out, ReLU), linear N(0, 0.01), biases 0."""
        vgg_init(module, generator, names)


@torch.no_grad()
def vgg_init(model: nn.Module, generator: torch.Generator | None = None, names: set[str] | None = None) -> None:
    """torchvision VGG's initialisation of every Conv2d and Linear in `model` (only those whose weight is
    named in `names`, if given), drawn from `generator` (on its device, then copied)."""
    for module_name, m in model.named_modules():
        if not isinstance(m, (nn.Conv2d, nn.Linear)):
            continue
        if names is not None and f"{module_name}.weight" not in names:
            continue
        if isinstance(m, nn.Conv2d):
            std = (2.0 / (m.out_channels * m.kernel_size[0] * m.kernel_size[1])) ** 0.5  # Kaiming, fan-out, ReLU
        else:
            std = 0.01
        device = generator.device if generator is not None else m.weight.device
        m.weight.copy_(torch.empty(m.weight.shape, dtype=m.weight.dtype, device=device).normal_(0, std,
                                                                                               generator=generator))
        if m.bias is not None:
            m.bias.zero_()


def _image_shape(name: str, in_shape: Sequence[int], pools: int) -> tuple[int, int, int]:
    if len(in_shape) != 3 or min(in_shape[1:]) < 2 ** pools:
        raise ValueError(f"{name} needs image inputs (channels, height, width) of at least {2 ** pools}x{2 ** pools} "
                         f"pixels, got {tuple(in_shape)}")
    return int(in_shape[0]), int(in_shape[1]), int(in_shape[2])
