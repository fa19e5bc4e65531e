"""clreg: regularisation-based continual learning for PyTorch.

One quadratic penalty, many importance measures: `Regularizer(model, "si", c=0.2)` adds SI, EWC, MAS,
SOS, ... to any model and training loop; `clreg run` reproduces the papers' benchmarks.
"""
from . import importance, metrics
from .callbacks import Callback
from .importance import ImportanceMeasure, create as create_measure, method_names
from .penalty import QuadraticPenalty
from .regularizer import Regularizer

__version__ = "0.1.0"
__all__ = ["Regularizer", "QuadraticPenalty", "ImportanceMeasure", "Callback", "create_measure", "method_names",
           "importance", "metrics"]
