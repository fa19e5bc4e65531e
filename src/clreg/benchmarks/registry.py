"""The benchmarks, registered by name: each is one file (beside its data reader in clreg.data) that registers its
builder with its defaults and the options it takes. `clreg benchmarks`, the run settings' checks and
`build_benchmark` are derived from what is registered here."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from clreg.benchmarks.base import Benchmark, Defaults, check_evaluate_on

OPTIONS = {"split_classes": "--split-classes", "permute": "--permute", "task_sizes": "--task-sizes",
           "trust_pickle": "--trust-pickle"}  # the settings a benchmark may take beyond tasks, seed, split and data


@dataclass(frozen=True)
class Request:
    """What a run asks of its benchmark (options a benchmark does not take are None or False)."""

    tasks: int | None
    seed: int
    evaluate_on: str
    data_dir: str | Path | None
    split_classes: int | None = None
    permute: int | None = None
    task_sizes: list[int] | None = None
    trust_pickle: bool = False
    path: str | None = None  # arrays:PATH: the part after the colon


@dataclass(frozen=True)
class Entry:
    """A registered benchmark: `build(request)` → its task sequence."""

    name: str  # "arrays:PATH" stands for every name that starts with "arrays:"
    build: Callable[[Request], Benchmark]
    defaults: Defaults
    options: tuple[str, ...] = ()  # of OPTIONS

    @property
    def prefix(self) -> str | None:
        """For a family of names (NAME:PATH), the part up to the colon."""
        return self.name.split(":")[0] + ":" if ":" in self.name else None


ENTRIES: dict[str, Entry] = {}


def register(name: str, build: Callable[[Request], Benchmark], defaults: Defaults, options: tuple[str, ...] = ()
             ) -> Entry:
    """Register a benchmark (ValueError for a name taken or an unknown option)."""
    if name in ENTRIES:
        raise ValueError(f"a benchmark named {name!r} is registered already")
    unknown = [o for o in options if o not in OPTIONS]
    if unknown:
        raise ValueError(f"benchmark {name}: unknown option(s) {', '.join(unknown)}; known: {', '.join(OPTIONS)}")
    ENTRIES[name] = Entry(name, build, defaults, tuple(options))
    return ENTRIES[name]


def lookup(name: str) -> Entry:
    """The entry of benchmark `name` (an `arrays:...` name finds arrays:PATH); ValueError naming the choices."""
    if name in ENTRIES:
        return ENTRIES[name]
    for entry in ENTRIES.values():
        if entry.prefix and name.startswith(entry.prefix):
            if name == entry.prefix:
                raise ValueError(f"{entry.name} needs the path of a .npz file after the colon, e.g. "
                                 f"{entry.prefix}data/mine.npz")
            return entry
    raise ValueError(f"unknown benchmark {name!r}; choose one of: {', '.join(ENTRIES)}")


def takers(option: str) -> list[str]:
    """The benchmarks that take `option`."""
    return [entry.name for entry in ENTRIES.values() if option in entry.options]


def check_options(name: str, given: dict) -> None:
    """ValueError for an option (of OPTIONS) set for a benchmark that does not take it."""
    entry = lookup(name)
    for option, value in given.items():
        if value not in (None, False) and option not in entry.options:
            names = takers(option)
            raise ValueError(f"{OPTIONS[option]} applies to {' and '.join(names) if len(names) < 3 else ', '.join(names)}"
                             f" only, not {name}")


def build(name: str, request: Request) -> Benchmark:
    """The benchmark registered under `name` for `request`, its options checked first."""
    entry = lookup(name)
    check_evaluate_on(request.evaluate_on)
    check_options(name, {option: getattr(request, option) for option in OPTIONS})
    if entry.prefix:
        request = Request(**{**request.__dict__, "path": name[len(entry.prefix):]})
    return entry.build(request)
