"""The networks of the papers' benchmarks (MLP, the CIFAR network, VGG), the multi-head wrapper, and their
initialisation."""
from clreg.models.build import (DEFAULT_WIDTHS, MLP, NETWORKS, CifarNet, MultiHead, build_model, glorot_init,
                                reinitialize, task_forward)

__all__ = ["DEFAULT_WIDTHS", "MLP", "NETWORKS", "CifarNet", "MultiHead", "build_model", "glorot_init", "reinitialize",
           "task_forward"]
