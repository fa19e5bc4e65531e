"""Importance measures and their registry: names (as in the paper) → classes."""
from __future__ import annotations

import inspect
import warnings
from importlib.metadata import entry_points

from clreg.core.options import Option, merge
from clreg.importance.base import ImportanceMeasure, TaskSample
from clreg.importance.sensitivity import (L2, AbsoluteFisher, FineTune, Fisher, L2Constant, MaxMemoryAwareSynapses,
                          MaxMemoryAwareSynapsesLogits, MemoryAwareSynapses, MemoryAwareSynapsesLogits,
                          SqrtFisher, WeightMagnitude)
from clreg.importance.squisher import Squisher
from clreg.core.statistic import StepStatistic
from clreg.importance.trajectory import (SecondOrderSynapses, SynapticIntelligence, SynapticIntelligenceBias,
                         SynapticIntelligenceUnbiased, TrajectoryMeasure, auto_alpha)

REGISTRY: dict[str, type[ImportanceMeasure]] = {}
ENTRY_POINTS = "clreg.measures"  # other packages register measures under this entry-point group


def register(cls: type[ImportanceMeasure]) -> type[ImportanceMeasure]:
    """Add a measure under `cls.name` (usable as a class decorator). Its declared `settings` become run
    settings, flags and `clreg methods` lines; register before `clreg.train.config` is imported (entry points
    in the clreg.measures group are loaded when clreg is: `load_plugins`)."""
    if not cls.name or cls.name in REGISTRY:
        raise ValueError(f"a measure needs a name not yet registered, got {cls.name!r} ({cls.__name__})")
    REGISTRY[cls.name] = cls
    return cls


for _cls in (SynapticIntelligence, SynapticIntelligenceUnbiased, SynapticIntelligenceBias, SecondOrderSynapses,
             Fisher, SqrtFisher, AbsoluteFisher, MemoryAwareSynapses, MemoryAwareSynapsesLogits,
             MaxMemoryAwareSynapses, MaxMemoryAwareSynapsesLogits, Squisher, WeightMagnitude, L2, L2Constant, FineTune):
    register(_cls)
ALIASES = {"ewc": "fisher"}


def load_plugins() -> None:
    """Register the measures of the clreg.measures entry-point group (`import clreg` calls this once, when clreg
    and clreg.importance are whole, so a plugin may import either). A plugin that registers itself with the
    decorator on load counts as registered; one that fails to load or to register is skipped with a warning
    naming it, and takes nothing else down."""
    for entry in entry_points(group=ENTRY_POINTS):
        try:
            cls = entry.load()
            if REGISTRY.get(getattr(cls, "name", None)) is not cls:
                register(cls)
        except Exception as error:  # noqa: BLE001 (any failure of a third party's code)
            warnings.warn(f"clreg: skipped the measure plugin {entry.name!r} ({entry.value}): "
                          f"{type(error).__name__}: {error}", RuntimeWarning, stacklevel=2)


def method_names() -> list[str]:
    """All registry names, aliases included."""
    return list(REGISTRY) + list(ALIASES)


def measure_class(name: str) -> type[ImportanceMeasure]:
    """The class registered under `name` or an alias; ValueError naming the choices otherwise."""
    key = ALIASES.get(name, name)
    if key not in REGISTRY:
        raise ValueError(f"unknown method {name!r}; choose one of: {', '.join(method_names())}")
    return REGISTRY[key]


def settings() -> tuple[Option, ...]:
    """Every registered measure's run settings, each once."""
    return merge(*(cls.settings for cls in REGISTRY.values()))


def create(name: str, **options) -> ImportanceMeasure:
    """Instantiate the measure registered under `name` (or an alias) with its options. A declared setting may
    be given by its keyword (mode) or by its run-setting name (fisher_mode); its value is checked as the
    setting declares (Option.parse)."""
    cls = measure_class(name)
    accepted = [n for n in inspect.signature(cls).parameters if n != "self"]
    declared = {**{o.name: o for o in cls.settings}, **{o.keyword: o for o in cls.settings}}
    given: dict = {}
    for key, value in options.items():
        option = declared.get(key)
        keyword = option.keyword if option is not None else key
        if keyword not in accepted:
            raise ValueError(f"method {name!r} has no option {key!r}; its options are: "
                             f"{', '.join(_spellings(cls, n) for n in accepted) or 'none'}")
        if keyword in given:
            raise ValueError(f"method {name!r}: {keyword!r} is given twice (as {keyword!r} and {option.name!r})")
        if option is not None:
            try:
                value = option.parse(value)
            except ValueError as err:
                raise ValueError(f"method {name!r}: {key} {err}") from None
        given[keyword] = value
    return cls(**given)


def _spellings(cls: type[ImportanceMeasure], keyword: str) -> str:
    """A constructor keyword, with its run-setting name and flag where they differ: "mode (fisher_mode, --fisher-mode)"."""
    option = next((o for o in cls.settings if o.keyword == keyword), None)
    if option is None or option.name == keyword:
        return keyword if option is None or option.cli_flag[2:] == keyword else f"{keyword} ({option.cli_flag})"
    return f"{keyword} ({option.name}, {option.cli_flag})"


__all__ = ["ImportanceMeasure", "TaskSample", "StepStatistic", "TrajectoryMeasure",
           "REGISTRY", "ALIASES", "create", "register", "measure_class", "method_names", "settings", "auto_alpha",
           *[cls.__name__ for cls in REGISTRY.values()]]
