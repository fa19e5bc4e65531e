"""Many runs as one: the stacked network (`stacked`), the stacked optimiser step (`step`), and the trainer
that runs K members through the one training loop (`trainer`).

`from clreg.vectorized import VectorizedTrainer, ...` keeps working (loaded at first use)."""
from importlib import import_module

_TRAINER = ("COPIES_PER_RUN", "FREE", "NETWORKS", "VectorizedTrainer", "available_bytes", "fitting_size",
            "group_key", "run_bytes", "why_not")


def __getattr__(name: str):
    if name in _TRAINER:
        return getattr(import_module("clreg.vectorized.trainer"), name)
    raise AttributeError(f"module 'clreg.vectorized' has no attribute {name!r}")
