"""clreg: regularisation-based continual learning for PyTorch.

One quadratic penalty, many importance measures: `Regularizer(model, "si", c=0.2)` adds SI, EWC, MAS,
SOS, ... to any model and training loop; `clreg run` reproduces the papers' benchmarks.
"""
from clreg import importance, moved
from clreg.core.penalty import QuadraticPenalty
from clreg.importance import ImportanceMeasure, create as create_measure, method_names
from clreg.regularizer import Regularizer
from clreg.train import metrics
from clreg.train.callbacks import Callback

moved.install()

__version__ = "0.1.0"
__all__ = ["Regularizer", "QuadraticPenalty", "ImportanceMeasure", "Callback", "create_measure", "method_names",
           "importance", "metrics"]

importance.load_plugins()  # last, with clreg whole: a plugin may import it
