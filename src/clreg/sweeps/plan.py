"""Grid search × seeds over a results store (docs/algorithms.md §8's protocol).

Per method and re-init option, c runs over its grid on the search seeds and is chosen on the search
split (validation); while the best c sits on the grid's edge the grid is extended by the next value of
{1, 2, 5} · 10^i beyond it. The chosen (c, re-init) then runs for every seed on the final split (test).

The plan is a pure function of what the store holds, so a sweep resumes by being run again: finished
runs are read back, never repeated; several drivers on one store share the work.
"""
from __future__ import annotations

import math
import signal
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable

from clreg.train.config import RunConfig
from clreg.sweeps.store import FINISHED, ResultError, Store, check_result
from clreg.sweeps.spec import Entry, Line, SweepSpec, select

MANTISSAS = (1, 2, 5)
WAIT = "wait"  # lookup(): the run is in flight (here or in another worker)


def lattice_neighbour(c: float, up: bool) -> float | None:
    """The next value of {1, 2, 5} · 10^i above (below) c > 0; None for c <= 0 or beyond 1e30."""
    if c <= 0:
        return None
    exponent = math.floor(math.log10(c))
    candidates = sorted(float(f"{a}e{i}") for i in range(exponent - 1, exponent + 2) for a in MANTISSAS)
    tolerance = c * 1e-9
    found = [v for v in candidates if v > c + tolerance] if up else [v for v in candidates if v < c - tolerance]
    if not found:
        return None
    value = found[0] if up else found[-1]
    return value if value < 1e30 else None


def edge_extension(values: list[float], best: float) -> float | None:
    """The value to add when `best` is the largest or smallest of `values` (at least two), else None."""
    if len(values) < 2:
        return None
    if best == values[-1]:
        return lattice_neighbour(best, up=True)
    if best == values[0] and best > 0:
        return lattice_neighbour(best, up=False)
    return None


@dataclass
class EntryState:
    """What the store says about one method of a sweep."""

    entry: Entry
    curves: dict[Line, dict[float, float | None]] = field(default_factory=dict)  # line -> c -> search score
    at_edge: dict[Line, bool] = field(default_factory=dict)  # the search stopped with the best c on an edge
    selected: tuple[float, Line] | None = None  # (c, line): line.reinit and line.point are the chosen settings
    final: list[dict] = field(default_factory=list)  # finished final runs (store rows)
    failed: list[dict] = field(default_factory=list)  # runs that failed (errors, not divergence): store rows
    interrupted: list[dict] = field(default_factory=list)  # runs stopped by Ctrl-C: neither failed nor done
    search_done: bool = False
    complete: bool = False

    @property
    def settled(self) -> bool:
        """Nothing more to run now: complete, or stopped by failed runs (retried by the next invocation)."""
        return self.complete or bool(self.failed)


def score(row: dict, metric: str) -> float:
    """A finished run's search score: the metric, or -inf for a diverged or failed run."""
    if row["status"] != "done":
        return -math.inf
    return float(row["result"][metric])


Lookup = Callable[[str], "dict | str | None"]


def _fetch(config: RunConfig, lookup: Lookup, wanted: list[RunConfig]) -> dict | None:
    """The finished run of `config`, or None; an unknown run is added to `wanted` (one in flight is not)."""
    found = lookup(config.key())
    if found is None:
        wanted.append(config)
    return found if isinstance(found, dict) else None


def _search_line(spec: SweepSpec, entry: Entry, line: Line, lookup: Lookup, wanted: list, state: EntryState) -> bool:
    """Walk one c line (re-init and grid values fixed), extending it while its best c is on the edge; True
    when complete.
    A failed run stops the line (no c is chosen from a grid with a hole in it): see state.failed."""
    values = list(entry.c)
    curve: dict[float, float | None] = {}
    state.curves[line] = curve
    extensions = 0
    while True:
        missing = False
        for c in values:
            rows = [_fetch(spec.config(entry, c, line, seed, spec.search_evaluate_on), lookup, wanted)
                    for seed in spec.seeds[:spec.search_seeds]]
            state.failed += [r for r in rows if r is not None and r["status"] == "failed"]
            if None in rows or any(r["status"] == "failed" for r in rows):
                missing = True
                curve[c] = None
            else:
                curve[c] = sum(score(r, spec.metric) for r in rows) / len(rows)
        if missing:
            return False
        best = max(values, key=lambda c: (curve[c], -c))
        extension = edge_extension(values, best)
        state.at_edge[line] = extension is not None  # flagged whether or not the grid may be extended
        if extension is None or not spec.extend or extensions >= spec.max_extensions:
            return True
        values = sorted(values + [extension])
        extensions += 1


def plan_entry(spec: SweepSpec, entry: Entry, lookup: Lookup, wanted: list[RunConfig]) -> EntryState:
    """Add the runs `entry` still needs to `wanted`; return what is known of it."""
    state = EntryState(entry)
    done = [_search_line(spec, entry, line, lookup, wanted, state) for line in entry.lines()]
    if not all(done):
        if len(entry.c) == 1 and len(entry.lines()) == 1:  # nothing to choose: the final runs can start now
            for seed in spec.seeds:
                _fetch(spec.config(entry, entry.c[0], entry.lines()[0], seed, spec.final_evaluate_on), lookup, wanted)
        return state
    state.search_done = True
    order = {line: i for i, line in enumerate(entry.lines())}  # ties: the smaller c, then the earlier line
    best_score, _, _, c, line = max((curve[c], -c, -order[line], c, line) for line, curve in state.curves.items()
                                    for c in curve)
    state.selected = (c, line)
    rows = [_fetch(spec.config(entry, c, line, seed, spec.final_evaluate_on), lookup, wanted) for seed in spec.seeds]
    state.final = [row for row in rows if row is not None]
    state.failed += [row for row in state.final if row["status"] == "failed"]
    state.complete = len(state.final) == len(rows) and not state.failed
    return state


def plan(spec: SweepSpec, lookup: Lookup) -> tuple[list[RunConfig], dict[str, EntryState]]:
    """The runs the sweep needs next (not finished, not in flight) and the state of every method."""
    wanted: list[RunConfig] = []
    states = {entry.label: plan_entry(spec, entry, lookup, wanted) for entry in spec.entries}
    unique = list({config.key(): config for config in wanted}.values())
    return unique, states


def stored_lookup(store: Store, interrupted: list[dict] | None = None) -> Lookup:
    """A lookup that sees finished (and failed) runs only: for reports of a store. Interrupted runs it
    meets are appended to `interrupted` (they count as in flight: the next sweep runs them)."""
    rows = {row["key"]: row for row in store.runs() if row["status"] in (*FINISHED, "failed", "interrupted")}

    def lookup(key: str) -> dict | str:
        row = rows.get(key)
        if row is not None and row["status"] == "interrupted":
            if interrupted is not None:
                interrupted.append(row)
            return WAIT
        return WAIT if row is None else row
    return lookup


def remaining(seconds: float, done: int, total: int) -> str:
    """'about 1 h 05 min left' from `seconds` spent on `done` runs (of `total`), 'estimating' before one."""
    if done == 0:
        return "estimating time left"
    left = round(seconds / done * max(0, total - done))
    hours, minutes = divmod(max(left, 0) // 60, 60)
    if hours:
        return f"about {hours} h {minutes:02d} min left"
    return f"about {minutes} min left" if minutes else f"about {left} s left"


class SweepDriver:
    """Runs a sweep on an executor, claiming runs in the store one by one and recording each result
    as it arrives (each result checked as an import's is: clreg.sweeps.store.check_result); Ctrl-C or an
    error hands the runs in flight back (status interrupted, run again next time). Each progress line says
    how many of the runs known so far are finished and estimates the time left from this invocation's pace.
    `only` names the methods to run now (all when empty); the store keeps the whole spec, so that
    `clreg report` still shows every row."""

    def __init__(self, spec: SweepSpec, store: Store, executor, log: Callable[[str], None] = print,
                 poll: float = 5.0, heartbeat_every: float = 30.0, only: tuple[str, ...] = ()):
        self.spec, self.store, self.executor, self.log = spec, store, executor, log
        self.active = select(spec, only)  # the methods this invocation runs; the store keeps the whole spec
        self.poll, self.heartbeat_every = poll, heartbeat_every
        self.attempted: set[str] = set()
        self.in_flight: dict[str, RunConfig] = {}
        self.finished: dict[str, dict] = {}
        self.runs_recorded = 0
        self.total, self.done, self.started = 0, 0, time.monotonic()

    def lookup(self, key: str) -> dict | str | None:
        """Finished row, WAIT if in flight anywhere, or None if it should be run (again)."""
        if key in self.finished:
            return self.finished[key]
        if key in self.in_flight:
            return WAIT
        row = self.store.get(key)
        if row is None or row["status"] == "pending":
            return None
        if row["status"] in FINISHED or (row["status"] == "failed" and key in self.attempted):
            self.finished[key] = row
            return row
        if row["status"] == "running" and not self.store.is_stale(row["host"], row["pid"], row["heartbeat"]):
            return WAIT
        return None  # failed or interrupted in an earlier invocation, or abandoned by a dead worker: run it again

    def _heartbeats(self, stop: threading.Event) -> None:
        """Every `heartbeat_every` seconds, mark this driver's runs as alive (own connection: a run in
        this process can take an hour, and other hosts must not take it over meanwhile)."""
        store = Store(self.store.path, self.store.stale_after)
        while not stop.wait(self.heartbeat_every):
            store.heartbeat(list(self.in_flight))
        store.close()

    def run(self) -> dict[str, EntryState]:
        """Drive the sweep until every method has its final runs, or is stopped by runs that failed in this
        invocation (each failed run is tried once per invocation); return the states."""
        self.store.save_sweep(self.spec.name, self.spec.to_dict())
        stop = threading.Event()
        beat = threading.Thread(target=self._heartbeats, args=(stop,), daemon=True)
        beat.start()
        try:
            with _terminate_as_interrupt():
                while True:
                    wanted, states = self._count()
                    self._submit(wanted)
                    if not self.in_flight:
                        if all(s.settled for s in states.values()):
                            return states
                        if not wanted:  # the rest is in flight in other workers
                            time.sleep(self.poll)
                        continue
                    for key, record in self.executor.wait(self.heartbeat_every):
                        self._record(key, record)
        except BaseException as err:
            self.store.release(list(self.in_flight), f"interrupted: {type(err).__name__}")
            self.executor.shutdown(cancel=True)
            raise
        finally:
            stop.set()
            beat.join()

    def _count(self) -> tuple[list[RunConfig], dict[str, EntryState]]:
        """`plan` of the active methods, counting the progress: runs with an outcome (finished, or failed in
        this invocation) among the runs the plan needs so far, and that total, with one final run per seed
        for each method still searching; the total never decreases."""
        seen: dict[str, dict | str | None] = {}

        def lookup(key: str) -> dict | str | None:
            seen[key] = self.lookup(key)
            return seen[key]
        wanted, states = plan(self.active, lookup)
        self.done = sum(isinstance(found, dict) for found in seen.values())
        searching = sum(not s.search_done and not (len(s.entry.c) == 1 and len(s.entry.lines()) == 1)
                        for s in states.values())
        self.total = max(self.total, len(seen) + len(self.spec.seeds) * searching)
        return wanted, states

    def _submit(self, wanted: list[RunConfig]) -> None:
        self.store.add_pending([(config.key(), config.canonical()) for config in wanted])
        for config in wanted:
            if len(self.in_flight) >= self.executor.slots:
                return
            key = config.key()
            if self.store.claim(key, config.canonical()):
                self.attempted.add(key)
                self.in_flight[key] = config
                self.executor.submit(key, config.canonical())

    def _record(self, key: str, record: dict) -> None:
        config = self.in_flight.pop(key)
        try:
            check_result(record["status"], record.get("result"))
        except ResultError as err:  # a run's output that is not a result: kept as a failure, never as a number
            record = {**record, "status": "failed", "result": None, "error": f"invalid result: {err}",
                      "message": f"invalid result: {err}"}
        self.store.finish(key, record)
        self.runs_recorded += 1
        self.done += 1
        self.total = max(self.total, self.done + len(self.in_flight))
        where = f"{config.method} c={config.c:g}{' reinit' if config.reinit else ''} seed {config.seed} ({config.evaluate_on})"
        if record["status"] == "done":
            outcome = f"{100 * record['result'][self.spec.metric]:.2f}% {self.spec.metric}"
        else:
            lines = (record.get("error") or "").strip().splitlines() or ["no message"]
            outcome = record["status"] + (f" at step {record['diverged_step']}" if record.get("diverged_step") is not None
                                          else f": {lines[-1]}")
        pace = remaining(time.monotonic() - self.started, self.runs_recorded,
                         self.runs_recorded + max(0, self.total - self.done))
        self.log(f"[{self.done}/{self.total} done, {pace}] {where}: {outcome} ({record.get('seconds') or 0:.0f} s)")


class Terminated(KeyboardInterrupt):
    """SIGTERM (`kill`, a job scheduler's stop) received by a sweep's driver: handled as Ctrl-C is."""


@contextmanager
def _terminate_as_interrupt():
    """Within: SIGTERM raises `Terminated`, so the driver hands its runs in flight back to the store and stops its
    workers, as on Ctrl-C (by default SIGTERM ends the process at once, leaving both behind). Only the main thread
    can take signals; elsewhere nothing changes."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum, frame):
        raise Terminated(f"signal {signum}")

    previous = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
