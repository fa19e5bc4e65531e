"""Results kept as files, taken into a store: `clreg store import STORE FILE...`.

A store does not outlive its machine; the repository keeps finished runs as JSON instead. Two kinds of
file are read:

- a report's `runs.json` (`clreg report`): every row of a store, and the sweeps' specifications;
- a run's result (`clreg run --out`): one finished run.

Each run is filed under the key *this* clreg computes from its config (settings a newer clreg added take
their defaults, which reproduce the older behaviour), so a sweep afterwards finds it and does not run it
again. Only finished runs (done, diverged) are taken; a finished run the store already holds is kept as
it is. Every file is read and checked before anything is written, and the rows are written in one
transaction: a bad file imports nothing. A run's config is read through the declared settings (finite
numbers only), its result checked as a sweep checks a run's own output (clreg.sweeps.store.check_result:
the accuracy matrix and the metrics recomputed from it), a sweep's specification as its sweep file is; the
store itself must pass its check (`Store.check`) before anything is added.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path

from clreg.core.options import SettingError
from clreg.train.config import RunConfig
from clreg.sweeps.spec import SpecError, stored_spec
from clreg.sweeps.store import FINISHED, STATUSES, ResultError, Store, check_result

RESULT_ONLY = ("versions", "machine")  # a `clreg run --out` result carries these; a store keeps them in columns


class ImportFileError(ValueError):
    """A file that is not a clreg result or runs.json, or holds a run that cannot be read."""


@dataclass
class Imported:
    """What one import did: run counts by outcome and the sweeps taken in."""

    added: int = 0
    kept: int = 0  # finished in the store already
    skipped: dict[str, int] = field(default_factory=dict)  # unfinished rows of a runs.json, by status
    rekeyed: int = 0  # the file's key differs from this clreg's key for the same config
    sweeps: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line for the terminal."""
        parts = [f"{self.added} run(s) added", f"{self.kept} already in the store (kept)"]
        if self.skipped:
            parts.append("not finished, skipped: " + ", ".join(f"{n} {s}" for s, n in sorted(self.skipped.items())))
        if self.rekeyed:
            parts.append(f"{self.rekeyed} filed under this clreg's key for their config")
        if self.sweeps:
            parts.append("sweep(s) " + ", ".join(self.sweeps))
        return "; ".join(parts)


def read_file(path: str | Path) -> tuple[dict, list[dict]]:
    """(sweep specifications by name, run rows) from a runs.json or a single result file."""
    path = Path(path)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        raise ImportFileError(f"{str(path)!r}: no such file") from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise ImportFileError(f"{str(path)!r} is not JSON ({err})") from None
    if isinstance(data, dict) and isinstance(data.get("runs"), list):
        sweeps = data.get("sweeps") or {}
        if not isinstance(sweeps, dict):
            raise ImportFileError(f"{str(path)!r}: 'sweeps' must map sweep names to specifications")
        for name, spec in sweeps.items():
            try:
                stored_spec(spec)
            except SpecError as err:
                raise ImportFileError(f"{str(path)!r}: sweep {name!r}: {err}") from None
        return sweeps, data["runs"]
    if isinstance(data, dict) and "config" in data and "accuracy_matrix" in data:
        result = {k: v for k, v in data.items() if k not in RESULT_ONLY}
        return {}, [{"status": "done", "config": data["config"], "result": result,
                     **{k: data.get(k) for k in RESULT_ONLY}}]
    raise ImportFileError(f"{str(path)!r} is neither a runs.json written by `clreg report` (a 'runs' list) nor a "
                          "result written by `clreg run --out` ('config' and 'accuracy_matrix')")


def _name(config: dict) -> str:
    """'si c=0.2 seed 0': the run an error is about."""
    c = config.get("c")
    c_text = f" c={c:g}" if isinstance(c, (int, float)) and not isinstance(c, bool) and math.isfinite(c) else ""
    method = f"{config['method']}" if "method" in config else ""
    return f"{method}{c_text} seed {config.get('seed', 0)}".strip()


def check_row(row, where: str) -> tuple[str, dict] | None:
    """(this clreg's key, row) for a finished run; None for an unfinished one (its config checked too). Raises
    on a bad row, naming
    the run (method, c, seed) and the field."""
    if not isinstance(row, dict) or not isinstance(row.get("config"), dict):
        raise ImportFileError(f"{where}: a run must be an object with a 'config' object")
    status = row.get("status")
    if status not in STATUSES:
        raise ImportFileError(f"{where}: status {status!r} is not one of {', '.join(STATUSES)}")
    where = f"{where} ({_name(row['config'])})"
    try:
        key = RunConfig.from_dict(row["config"]).key()  # each setting parsed by its declaration: finite, in range
    except SettingError as err:  # named as the file's fields: config.c
        raise ImportFileError(f"{where}: {err.template.format(*(f'config.{o.name}' for o in err.options))}") from None
    except (TypeError, ValueError) as err:
        raise ImportFileError(f"{where}: config not readable by this clreg: {err}") from None
    if status not in FINISHED:  # checked all the same: a file with one unreadable run is refused whole
        return None
    try:
        check_result(status, row.get("result"))
    except ResultError as err:
        raise ImportFileError(f"{where}: result: {err}") from None
    return key, row


def collect(paths: list[str | Path]) -> tuple[dict[str, dict], dict[str, dict], Imported]:
    """Read and check every file: (finished runs by this clreg's key, sweeps by name, counts so far)."""
    if not paths:
        raise ImportFileError("give at least one runs.json or result file to import")
    out, sweeps, runs = Imported(), {}, {}
    for path in paths:
        file_sweeps, rows = read_file(path)
        sweeps.update(file_sweeps)
        for i, row in enumerate(rows):
            checked = check_row(row, f"{path}: run {i}")
            if checked is None:
                out.skipped[row["status"]] = out.skipped.get(row["status"], 0) + 1
                continue
            key, row = checked
            out.rekeyed += "key" in row and row["key"] != key
            runs.setdefault(key, {**row, "config": RunConfig.from_dict(row["config"]).canonical()})
    return runs, sweeps, out


def import_files(store: Store | str | Path, paths: list[str | Path]) -> Imported:
    """Take the finished runs and sweeps of `paths` into `store` (a Store, or a path opened, and created if
    missing, only once every file has been checked); one transaction."""
    runs, sweeps, out = collect(paths)
    store = store if isinstance(store, Store) else Store(store)
    store.check()
    added, out.sweeps = store.add_finished(runs, sweeps)
    out.added, out.kept = added, len(runs) - added
    return out
