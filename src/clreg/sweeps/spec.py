"""A sweep's specification: read from YAML (safe loader: plain data only), validated with messages that
name the offending key and what it allows.

    name: pmnist-reduced                 # optional; default: the file's stem
    benchmark: permuted-mnist
    settings: {tasks: 10, hidden: [400, 400], epochs: 5}   # any `clreg run` setting but method/c/seed/eval
    seeds: [0, 1, 2]                     # or a count: 3 means 0, 1, 2
    search: {evaluate_on: validation, seeds: 1, metric: average_accuracy, extend: true, max_extensions: 4}
    final: {evaluate_on: test}
    paper: {source: "Benzing 2022, table 1", margin: 0.3}   # optional: what the `paper` figures below are from
    methods:
      si: {c: [0.1, 0.2, 0.5], reinit: true, paper: {mean: 97.2, se: 0.1}}   # a published figure, in %
      siu: {c: [1, 2, 5], reinit: [true, false]}
      finetune: {}
      sos-b2048: {method: sos, c: [5, 10, 20], reinit: true, settings: {batch_size: 2048, sos_alpha: 1}}
      si-sgd: {method: si, c: [1, 10], settings: {optimizer: sgd, momentum: 0.9}, grid: {lr: [0.01, 0.1]}}

An entry's `grid` lists other settings searched together with c: every combination of their values (and
of re-init) is one search line over c; the best (c, re-init, grid values) of all lines wins.

An entry's `paper` is the published figure of the sweep's metric that its final runs are compared with (in %):
`{mean: M, se: S}` gives the target M ± (S + margin), `{below: B}` or `{above: A}` a bound, `{about: M}` a
value without a spread (no target). It is not part of any run's identity.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import NamedTuple

from clreg.benchmarks import EVALUATE_ON
from clreg.core.options import finite_number
from clreg.core.yamlfile import YamlFileError, load_yaml
from clreg.train.config import BY_NAME, NOT_IN_KEY, RunConfig

METRICS = ("average_accuracy", "bwt")  # both: higher is better
SWEEP_SET = ("method", "c", "reinit", "seed", "evaluate_on", "benchmark")  # chosen by the sweep, not in settings
RUNTIME = NOT_IN_KEY  # where the data is read from and where runs train: not part of a run's identity
TOP_KEYS = ("name", "benchmark", "settings", "seeds", "search", "final", "paper", "methods")
ENTRY_KEYS = ("method", "c", "reinit", "settings", "grid", "paper")
PAPER_FORMS = (("mean", "se"), ("about",), ("below",), ("above",))  # an entry's published figure, in %
PAPER_KEYS = ("source", "margin")
PAPER_MARGIN = 0.3  # points added to the published s.e. for the target, unless the sweep file says otherwise
SEARCH_KEYS = ("evaluate_on", "seeds", "metric", "extend", "max_extensions")
MAX_RUNS = 10_000  # a sweep planning more runs is refused unless `clreg sweep --max-runs` allows them


class SpecError(ValueError):
    """A sweep file that cannot be run; the message names the key and what is allowed."""


class Line(NamedTuple):
    """One search line of an entry: c varies, re-init and the grid settings' values are fixed."""

    reinit: bool
    point: tuple = ()  # ((setting, value), ...) of the entry's grid, in the grid's order

    def describe(self) -> str:
        """'re-init on, lr 0.01'."""
        return ", ".join([f"re-init {'on' if self.reinit else 'off'}", *(f"{k} {v:g}" if isinstance(v, float)
                                                                           else f"{k} {v}" for k, v in self.point)])


@dataclass
class Entry:
    """One row of the table: a method with its c grid, re-init options, own settings and the settings
    searched with c (`grid`: setting → values)."""

    label: str
    method: str
    c: list[float]
    reinit: list[bool]
    settings: dict = field(default_factory=dict)
    grid: dict = field(default_factory=dict)
    paper: dict | None = None  # the published figure (one of PAPER_FORMS), not part of any run's key

    def lines(self) -> list[Line]:
        """Every combination of re-init and grid values: the search lines."""
        points = [()]
        for name, values in self.grid.items():
            points = [(*p, (name, tuple(v) if isinstance(v, list) else v)) for p in points for v in values]
        return [Line(reinit, point) for reinit in self.reinit for point in points]


@dataclass
class SweepSpec:
    """A validated sweep."""

    name: str
    benchmark: str
    settings: dict
    seeds: list[int]
    entries: list[Entry]
    search_evaluate_on: str = "validation"
    search_seeds: int = 1
    metric: str = "average_accuracy"
    extend: bool = True
    max_extensions: int = 4
    final_evaluate_on: str = "test"
    paper: dict = field(default_factory=lambda: {"source": "the paper", "margin": PAPER_MARGIN})  # of the figures
    runtime: dict = field(default_factory=dict)

    def config(self, entry: Entry, c: float, line: Line | bool, seed: int, evaluate_on: str) -> RunConfig:
        """The run config of one point of a search line (a bare bool: re-init, no grid settings)."""
        line = line if isinstance(line, Line) else Line(line)
        return RunConfig.from_dict({"benchmark": self.benchmark, **self.settings, **entry.settings, **dict(line.point),
                                    "method": entry.method, "c": c, "reinit": line.reinit, "seed": seed,
                                    "evaluate_on": evaluate_on})

    def to_dict(self) -> dict:
        """Plain data (as kept in the store), without the runtime options."""
        d = asdict(self)
        d.pop("runtime")
        return d

    @classmethod
    def from_dict(cls, data: dict) -> "SweepSpec":
        """Inverse of `to_dict`."""
        entries = [Entry(**e) for e in data["entries"]]  # specs stored before grids or paper figures: defaults
        return cls(**{**{k: v for k, v in data.items() if k in {f.name for f in fields(cls)}}, "entries": entries})


def load_spec(path: str | Path, seeds: int | list[int] | None = None, max_runs: int = MAX_RUNS) -> SweepSpec:
    """Read and validate a sweep file; `seeds` (a count or a list, as in the file) replaces the file's seeds.
    A sweep that plans more than `max_runs` runs is refused before they are planned."""
    path = Path(path)
    try:
        data = load_yaml(path, "sweep file", "reading a sweep file")  # UTF-8, no key twice
    except YamlFileError as err:
        raise SpecError(str(err)) from None
    if seeds is not None and isinstance(data, dict):
        data = {**data, "seeds": seeds}
    try:
        return parse_spec(data, default_name=path.stem, max_runs=max_runs)
    except SpecError as err:
        raise SpecError(f"{path}: {err}") from None


def stored_spec(data) -> SweepSpec:
    """A sweep's specification as a store or a runs.json keeps it (`SweepSpec.to_dict`), checked as its sweep
    file is; SpecError naming what is wrong."""
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise SpecError(f"a stored sweep specification must be a mapping with an 'entries' list, got {data!r:.60}")
    if not all(isinstance(e, dict) and isinstance(e.get("label"), str) for e in data["entries"]):
        raise SpecError("a stored sweep specification's entries must be mappings with a 'label'")
    known = {f.name for f in fields(SweepSpec)} - {"runtime"}
    unknown = sorted(set(data) - known)
    if unknown:
        raise SpecError(f"unknown key(s) {', '.join(map(repr, unknown))} in a stored sweep specification")
    search = {"evaluate_on": "search_evaluate_on", "seeds": "search_seeds", "metric": "metric", "extend": "extend",
              "max_extensions": "max_extensions"}
    methods = {}
    for e in data["entries"]:
        methods[e["label"]] = {k: e[k] for k in ENTRY_KEYS if e.get(k) is not None}
    sweep_file = {"name": data.get("name"), "benchmark": data.get("benchmark"), "settings": data.get("settings"),
                  "seeds": data.get("seeds"), "methods": methods,
                  "search": {k: data[v] for k, v in search.items() if v in data},
                  **({"final": {"evaluate_on": data["final_evaluate_on"]}} if "final_evaluate_on" in data else {}),
                  **({"paper": data["paper"]} if data.get("paper") else {})}
    return parse_spec(sweep_file, default_name=str(data.get("name")))


def select(spec: SweepSpec, labels: list[str] | tuple[str, ...]) -> SweepSpec:
    """The sweep restricted to the methods named by `labels` (all of them when empty), in the file's order."""
    known = [entry.label for entry in spec.entries]
    unknown = [label for label in labels if label not in known]
    if unknown:
        raise SpecError(f"no method {', '.join(map(repr, unknown))} in sweep {spec.name!r}; its methods: "
                        f"{', '.join(known)}")
    return replace(spec, entries=[entry for entry in spec.entries if not labels or entry.label in labels])


def _keys(where: str, data, allowed: tuple[str, ...]) -> dict:
    if not isinstance(data, dict):
        raise SpecError(f"{where} must be a mapping with keys among {', '.join(allowed)}, got {type(data).__name__}")
    unknown = [k for k in data if k not in allowed]
    if unknown:
        raise SpecError(f"{where}: unknown key(s) {', '.join(map(repr, unknown))}; allowed: {', '.join(allowed)}")
    return data


def _number_list(where: str, value, nonnegative: bool = True) -> list[float]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
                             and (v >= 0 or not nonnegative) for v in values):
        raise SpecError(f"{where} must be a number >= 0 or a non-empty list of them, got {value!r}")
    if len(set(values)) != len(values):
        raise SpecError(f"{where} lists a value twice: {value!r}")
    return sorted(float(v) for v in values)


def _bool_list(where: str, value) -> list[bool]:
    values = value if isinstance(value, list) else [value]
    if not values or not all(isinstance(v, bool) for v in values) or len(set(values)) != len(values):
        raise SpecError(f"{where} must be true, false or [true, false], got {value!r}")
    return values


def _settings(where: str, value) -> tuple[dict, dict]:
    """Run settings, each checked by its declaration (clreg.core.options); (settings, runtime ones)."""
    settings = dict(_keys(where, value or {}, tuple(f.name for f in fields(RunConfig) if f.name not in SWEEP_SET)))
    for name, setting in settings.items():
        try:
            settings[name] = BY_NAME[name].parse(setting)
        except ValueError as err:
            message = str(err)
            raise SpecError(f"{where}.{name} {message}" if message.startswith("must") else f"{where}.{name}: {message}"
                            ) from None
    runtime = {k: settings.pop(k) for k in RUNTIME if k in settings}
    return settings, runtime


def too_many(count: int, max_runs: int) -> SpecError:
    """The refusal of a sweep that plans `count` runs, over the limit."""
    return SpecError(f"the sweep plans {count} runs, more than the limit of {max_runs} (search lines × c values × "
                     "search seeds + final seeds, per method); give `clreg sweep --max-runs N` to allow more")


def _seeds(value, max_runs: int = MAX_RUNS) -> list[int]:
    if isinstance(value, int) and not isinstance(value, bool) and value > max_runs:
        raise too_many(value, max_runs)  # each seed is at least one final run: refused before the list is made
    if isinstance(value, int) and not isinstance(value, bool) and value >= 1:
        return list(range(value))
    if (isinstance(value, list) and value and all(isinstance(s, int) and not isinstance(s, bool) and s >= 0 for s in value)
            and len(set(value)) == len(value)):
        return list(value)
    raise SpecError(f"seeds must be a count >= 1 or a list of distinct integers >= 0, got {value!r}")


def _search(value, seeds: list[int]) -> dict:
    search = _keys("search", value or {}, SEARCH_KEYS)
    out = {"search_evaluate_on": search.get("evaluate_on", "validation"), "search_seeds": search.get("seeds", 1),
           "metric": search.get("metric", "average_accuracy"), "extend": search.get("extend", True),
           "max_extensions": search.get("max_extensions", 4)}
    if out["search_evaluate_on"] not in EVALUATE_ON:
        raise SpecError(f"search.evaluate_on must be one of {', '.join(EVALUATE_ON)}, got {out['search_evaluate_on']!r}")
    if not isinstance(out["search_seeds"], int) or not 1 <= out["search_seeds"] <= len(seeds):
        raise SpecError(f"search.seeds (how many of the seeds the grid search uses) must be 1..{len(seeds)}, "
                        f"got {out['search_seeds']!r}")
    if out["metric"] not in METRICS:
        raise SpecError(f"search.metric must be one of {', '.join(METRICS)}, got {out['metric']!r}")
    if not isinstance(out["extend"], bool):
        raise SpecError(f"search.extend must be true or false, got {out['extend']!r}")
    if not isinstance(out["max_extensions"], int) or isinstance(out["max_extensions"], bool) or out["max_extensions"] < 0:
        raise SpecError(f"search.max_extensions must be an integer >= 0, got {out['max_extensions']!r}")
    return out


def line_count(entry: Entry) -> int:
    """How many search lines `entry` has (re-init options × every grid combination), without listing them."""
    return len(entry.reinit) * math.prod(len(values) for values in entry.grid.values())


def planned_runs(spec: SweepSpec, entries: list[Entry] | None = None) -> int:
    """The runs a sweep plans at the start: per method, its search (lines × c values × search seeds) and its
    final runs (one per seed); grid extensions add to this as they are needed."""
    return sum(line_count(e) * len(e.c) * spec.search_seeds + len(spec.seeds)
               for e in (spec.entries if entries is None else entries))


def _entry(label: str, value, spec: SweepSpec, max_runs: int = MAX_RUNS) -> Entry:
    where = f"methods.{label}"
    data = _keys(where, value if value is not None else {}, ENTRY_KEYS)
    method = data.get("method", label)
    if not isinstance(method, str):
        raise SpecError(f"{where}.method must be a method name (see `clreg methods`), got {method!r}")
    if "c" not in data and method != "finetune":
        raise SpecError(f"{where}: c is required (a number or a list: the grid's starting values)")
    settings, runtime = _settings(f"{where}.settings", data.get("settings"))
    if runtime:
        raise SpecError(f"{where}.settings: {', '.join(runtime)} belong(s) in the top-level settings")
    entry = Entry(label, method, _number_list(f"{where}.c", data.get("c", 0.0)),
                  _bool_list(f"{where}.reinit", data.get("reinit", False)), settings,
                  _grid(f"{where}.grid", data.get("grid"), settings), _paper_figure(f"{where}.paper", data.get("paper")))
    if planned_runs(spec, [entry]) > max_runs:
        raise too_many(planned_runs(spec, [entry]), max_runs)
    try:
        for line in entry.lines():
            spec.config(entry, entry.c[0], line, spec.seeds[0], spec.final_evaluate_on)
    except ValueError as err:
        raise SpecError(f"{where}: {err}") from None
    return entry


def _number(where: str, value, low: float = 0.0, high: float = 100.0) -> float:
    try:
        return finite_number(value, low, high)
    except ValueError as err:
        raise SpecError(f"{where} {err}") from None


def _paper_figure(where: str, value) -> dict | None:
    """An entry's published figure: one of PAPER_FORMS, each number a percentage (s.e. at most 100 too)."""
    if value is None:
        return None
    forms = " or ".join("{" + ", ".join(f"{k}: N" for k in form) + "}" for form in PAPER_FORMS)
    if not isinstance(value, dict) or tuple(value) not in PAPER_FORMS and tuple(reversed(value)) not in PAPER_FORMS:
        raise SpecError(f"{where} must be the published figure in %: {forms}; got {value!r}")
    return {k: _number(f"{where}.{k}", v, 0.0 if k == "se" else -100.0) for k, v in value.items()}  # bwt is < 0


def _paper(value) -> dict:
    """The sweep's `paper`: where the entries' figures come from, and the margin of their targets."""
    data = _keys("paper", value or {}, PAPER_KEYS)
    source = data.get("source", "the paper")
    if not isinstance(source, str) or not source.strip():
        raise SpecError(f"paper.source must be a non-empty text (where the figures are published), got {source!r}")
    return {"source": source, "margin": _number("paper.margin", data.get("margin", PAPER_MARGIN), 0.0, 100.0)}


def _grid(where: str, value, settings: dict) -> dict:
    grid = dict(_keys(where, value or {}, tuple(f.name for f in fields(RunConfig) if f.name not in SWEEP_SET + RUNTIME)))
    for name, values in grid.items():
        if not isinstance(values, list) or not values or len({repr(v) for v in values}) != len(values):
            raise SpecError(f"{where}.{name} must be a non-empty list of distinct values, got {values!r}")
        if name in settings:
            raise SpecError(f"{where}.{name} is also fixed in the entry's settings: give it in one place")
    return grid


def parse_spec(data, default_name: str = "sweep", max_runs: int = MAX_RUNS) -> SweepSpec:
    """Validate plain data (a parsed YAML document) into a SweepSpec. Every problem found is reported in
    one SpecError (one line each), not only the first. A sweep planning more than `max_runs` runs is refused."""
    problems: list[str] = []

    def attempt(check, *args, default=None):
        try:
            return check(*args)
        except SpecError as err:
            if str(err) not in problems:
                problems.append(str(err))
            return default

    data = _keys("the sweep file", data, TOP_KEYS)  # nothing else can be read without this
    problems += [f"the sweep file needs {key!r}" for key in ("benchmark", "methods") if key not in data]
    name = data.get("name", default_name)
    if not isinstance(name, str) or not name:
        problems.append(f"name must be a non-empty string, got {name!r}")
    settings, runtime = attempt(_settings, "settings", data.get("settings"), default=({}, {}))
    seeds = attempt(_seeds, data.get("seeds", 1), max_runs, default=[0])
    final = attempt(_keys, "final", data.get("final") or {}, ("evaluate_on",), default={})
    final_on = final.get("evaluate_on", "test")
    if final_on not in EVALUATE_ON:
        problems.append(f"final.evaluate_on must be one of {', '.join(EVALUATE_ON)}, got {final_on!r}")
        final_on = "test"
    benchmark = data.get("benchmark")
    if "benchmark" in data and not isinstance(benchmark, str):
        problems.append(f"benchmark must be a name (see `clreg run --help`), got {benchmark!r}")
    search = attempt(_search, data.get("search"), seeds, default=None) or _search(None, seeds)
    paper = attempt(_paper, data.get("paper"), default=None) or _paper(None)
    spec = SweepSpec(name if isinstance(name, str) else "sweep", benchmark if isinstance(benchmark, str) else "",
                     settings, seeds, [], final_evaluate_on=final_on, paper=paper, runtime=runtime, **search)
    methods = data.get("methods")
    if "methods" in data and (not isinstance(methods, dict) or not methods):
        problems.append("methods must be a non-empty mapping: label -> {method, c, reinit, settings}")
    elif methods and isinstance(benchmark, str):
        spec.entries = [entry for label, value in methods.items()
                        if (entry := attempt(_entry, str(label), value, spec, max_runs)) is not None]
        if not problems and planned_runs(spec) > max_runs:
            problems.append(str(too_many(planned_runs(spec), max_runs)))
    if problems:
        raise SpecError(problems[0] if len(problems) == 1 else
                        f"{len(problems)} problems in the sweep file:\n" + "\n".join(f"  - {p}" for p in problems))
    return spec
