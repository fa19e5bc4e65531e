"""Importance measures and their registry: names (as in the paper) → classes."""
from __future__ import annotations

import inspect

from .base import ImportanceMeasure, TaskSample
from .sensitivity import (L2, AbsoluteFisher, FineTune, Fisher, L2Constant, MaxMemoryAwareSynapses,
                          MaxMemoryAwareSynapsesLogits, MemoryAwareSynapses, MemoryAwareSynapsesLogits,
                          SqrtFisher, WeightMagnitude)
from .statistic import StepStatistic
from .trajectory import (SecondOrderSynapses, SynapticIntelligence, SynapticIntelligenceBias,
                         SynapticIntelligenceUnbiased, TrajectoryMeasure, auto_alpha)

REGISTRY: dict[str, type[ImportanceMeasure]] = {
    cls.name: cls
    for cls in (SynapticIntelligence, SynapticIntelligenceUnbiased, SynapticIntelligenceBias,
                SecondOrderSynapses, Fisher, SqrtFisher, AbsoluteFisher, MemoryAwareSynapses,
                MemoryAwareSynapsesLogits, MaxMemoryAwareSynapses, MaxMemoryAwareSynapsesLogits,
                WeightMagnitude, L2, L2Constant, FineTune)
}
ALIASES = {"ewc": "fisher"}


def method_names() -> list[str]:
    """All registry names, aliases included."""
    return list(REGISTRY) + list(ALIASES)


def create(name: str, **options) -> ImportanceMeasure:
    """Instantiate the measure registered under `name` (or an alias) with its options."""
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}")
    accepted = [n for n in inspect.signature(REGISTRY[key]).parameters if n != "self"]
    unknown = sorted(set(options) - set(accepted))
    if unknown:
        raise ValueError(f"method {name!r} has no option {', '.join(map(repr, unknown))}; "
                         f"its options are: {', '.join(accepted) or 'none'}")
    return REGISTRY[key](**options)


__all__ = ["ImportanceMeasure", "TaskSample", "StepStatistic", "TrajectoryMeasure",
           "REGISTRY", "ALIASES", "create", "method_names", "auto_alpha",
           *[cls.__name__ for cls in REGISTRY.values()]]
