"""The results store: one SQLite file (WAL mode), one row per run keyed by the hash of its config.

A row's status goes pending → running → done | failed | diverged | interrupted. Claiming a run and
recording its result are each one transaction, so a crash loses at most the runs in flight, and any number
of processes (sweep drivers on one machine or on a shared disk) can use one store: a run is claimed by one
of them only. A `running` row whose owner is gone (a dead process on this host, or no heartbeat for
`stale_after` seconds) is claimed again; an `interrupted` one (Ctrl-C, an error of the driver) is neither
failed nor done, and the next sweep runs it again. Rows hold JSON text only; nothing is unpickled.

Every row carries a checksum: the SHA-256 of the canonical JSON (sorted keys, no spaces) of its key, status
and result, written with the result. `verify` recomputes it and checks every finished run's result as a
run's own output is checked (`check_result`), so a changed byte in a stored number is found, not
reported. Stores of schema version 1 (made before checksums, and before `interrupted`) are migrated on the
first writable open by a clreg that knows checksums: their rows are verified first (results only: they
have no checksum), then the table is rebuilt with the checksum column and every row is sealed in one
transaction; `migrated` then holds a one-line note for the user. A read-only open never migrates: such a
store's rows are verified by their results alone and counted as unsealed. Nothing is written to a store
whose check failed.
"""
from __future__ import annotations

import hashlib
import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np

from clreg.core.options import finite_number
from clreg.train import metrics

STATUSES = ("pending", "running", "done", "failed", "diverged", "interrupted")
FINISHED = ("done", "diverged")  # a result: never run again
SCHEMA_VERSION = 2  # 2: a checksum per row, status interrupted
RUNS_TABLE = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ({statuses})),
    result TEXT,
    error TEXT,
    message TEXT,
    diverged_step INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0,
    host TEXT,
    pid INTEGER,
    claimed REAL,
    heartbeat REAL,
    finished REAL,
    seconds REAL,
    versions TEXT,
    machine TEXT,
    checksum TEXT
)""".format(statuses=", ".join(f"'{s}'" for s in STATUSES))
SCHEMA = RUNS_TABLE + """;
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""
TOLERANCE = 1e-9  # stored metrics against the same metric recomputed from the stored matrix


class StoreError(ValueError):
    """A path that is not a clreg store, a store of another schema version, or one that failed its check."""


class ResultError(ValueError):
    """A run's result that is not what a run writes; the message names the field."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


def checksum(key: str, status: str, result) -> str:
    """SHA-256 of the canonical JSON of a row's key, status and result (decoded: the same for any spacing)."""
    text = json.dumps({"key": key, "status": status, "result": result}, sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(text.encode()).hexdigest()


def _number(value, field: str, low: float | None = None, high: float | None = None) -> float:
    try:
        return finite_number(value, low, high)
    except ValueError as err:
        raise ResultError(f"{field} {err}") from None


def _matrix(value) -> np.ndarray:
    """The accuracy matrix: T rows of T finite accuracies in [0, 1]."""
    if not isinstance(value, list) or not value or not all(isinstance(row, list) for row in value):
        raise ResultError(f"accuracy_matrix must be a list of rows (one per task trained), got {value!r:.60}")
    tasks = len(value)
    for i, row in enumerate(value):
        if len(row) != tasks:
            raise ResultError(f"accuracy_matrix row {i + 1} has {len(row)} entries; a matrix of {tasks} tasks "
                              f"has {tasks} per row")
        for j, v in enumerate(row):
            _number(v, f"accuracy_matrix[{i}][{j}]", 0.0, 1.0)
    return np.asarray(value, dtype=float)


def check_result(status: str, result) -> None:
    """Raise ResultError (naming the field) unless `result` is what a run with `status` writes: for a done
    run an accuracy matrix of finite accuracies in [0, 1] and the metrics that clreg.train.metrics computes
    from it (average accuracy, mean forgetting, BWT; the per-task lists where present), equal to within
    1e-9; optional did_not_learn (a bool) and chance (an accuracy). A diverged run's result names its step."""
    if status not in FINISHED:
        return
    if not isinstance(result, dict):
        raise ResultError(f"a {status} run needs its result (an object), got {result!r:.60}")
    if status == "diverged":
        step = result.get("diverged_step")
        if step is not None and (isinstance(step, bool) or not isinstance(step, int) or step < 0):
            raise ResultError(f"diverged_step must be a step number >= 0, got {step!r}")
        return
    if "accuracy_matrix" not in result:
        raise ResultError("a done run needs its result with an 'accuracy_matrix'")
    expected = metrics.summary(_matrix(result["accuracy_matrix"]))
    for name in ("average_accuracy", "mean_forgetting", "bwt"):
        if name not in result:
            raise ResultError(f"the result has no {name!r}")
        if abs(_number(result[name], name) - expected[name]) > TOLERANCE:
            raise ResultError(f"{name} {result[name]!r} is not the accuracy matrix's ({expected[name]!r})")
    for name in ("average_seen", "forgetting"):
        if name in result:
            got = result[name]
            if not isinstance(got, list) or len(got) != len(expected[name]) or \
                    any(abs(_number(v, name) - e) > TOLERANCE for v, e in zip(got, expected[name])):
                raise ResultError(f"{name} {got!r:.80} is not the accuracy matrix's")
    if "did_not_learn" in result and not isinstance(result["did_not_learn"], bool):
        raise ResultError(f"did_not_learn must be true or false, got {result['did_not_learn']!r}")
    if result.get("chance") is not None:
        _number(result["chance"], "chance", 0.0, 1.0)


def describe(row: dict) -> str:
    """A run as a user finds it: 'si c=0.2 seed 0 (test), key 24cc4a48aa9a'."""
    config = row.get("config")
    if isinstance(config, str):
        try:
            config = json.loads(config)
        except ValueError:
            config = None
    if not isinstance(config, dict):
        return f"key {str(row.get('key'))[:12]}"
    c = config.get("c")
    c_text = f" c={c:g}" if isinstance(c, (int, float)) and not isinstance(c, bool) else ""
    return (f"{config.get('method', '?')}{c_text}{' reinit' if config.get('reinit') else ''} seed {config.get('seed')} "
            f"({config.get('evaluate_on', '?')}), key {str(row.get('key'))[:12]}")


@dataclass
class Verification:
    """What `Store.verify` found: rows checked, rows without a checksum (a read-only store of schema 1),
    and one line per row or sweep that failed."""

    checked: int = 0
    unsealed: int = 0
    failures: list[str] = field(default_factory=list)

    def summary(self) -> str:
        """One line: counts, or the failing rows."""
        if self.failures:
            shown = "; ".join(self.failures[:5]) + (f"; and {len(self.failures) - 5} more" if len(self.failures) > 5 else "")
            return f"{len(self.failures)} of {self.checked} row(s) failed the check: {shown}"
        note = f" ({self.unsealed} without a checksum: stored by an earlier clreg, checked by their results)" \
            if self.unsealed else ""
        return f"{self.checked} run(s) checked, all pass{note}"


class Store:
    """A results store at `path` (created if missing). One connection per process; not thread-shared.
    `readonly`: opened read-only (a store on a read-only file or disk): nothing is created or migrated."""

    def __init__(self, path: str | Path, stale_after: float = 600.0, create: bool = True, readonly: bool = False):
        self.path = Path(path)
        self.readonly, self.migrated = readonly, None
        if self.path.is_dir():
            raise StoreError(f"store path {str(self.path)!r} is a directory; give a file name such as sweep.sqlite")
        if (readonly or not create) and not self.path.is_file():
            raise StoreError(f"no results store at {str(self.path)!r}")
        if create and not readonly and not self.path.parent.is_dir():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"store path {str(self.path)!r}: cannot create directory {str(self.path.parent)!r} "
                                 f"({err.strerror or err})") from None
        self.stale_after = stale_after
        self.host, self.pid = socket.gethostname(), os.getpid()
        try:
            if readonly:
                self.db = _connect_readonly(self.path)
                self._check_schema()
            else:
                self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
                self._quick_check()
                self.db.execute("PRAGMA journal_mode=WAL")
                self.db.execute("PRAGMA synchronous=NORMAL")
                self._create_schema()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{str(self.path)!r} is not a clreg results store (SQLite: {err})") from None

    def _quick_check(self) -> None:
        """SQLite's own check of the file (pages, indexes) before anything is written to it."""
        result = [line for (line,) in self.db.execute("PRAGMA quick_check")]
        if result != ["ok"]:
            raise StoreError(f"{str(self.path)!r} is a damaged SQLite file ({result[0]}); nothing was written to it")

    def _tables(self) -> set[str]:
        return {name for (name,) in self.db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}

    def _columns(self) -> set[str]:
        return {name for _, name, *_ in self.db.execute("PRAGMA table_info(runs)")}

    def _version(self) -> int | None:
        if "meta" not in self._tables():
            return None
        row = self.db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
        if row is None:
            return None
        if row[0] not in ("1", str(SCHEMA_VERSION)):
            raise StoreError(f"store {str(self.path)!r} has schema version {row[0]}; this clreg reads {SCHEMA_VERSION}")
        return int(row[0])

    def _check_schema(self) -> None:
        """A read-only store: the tables must be there, of a version this clreg reads."""
        self._quick_check()
        if not {"runs", "sweeps", "meta"} <= self._tables() or self._version() is None:
            raise StoreError(f"{str(self.path)!r} is not a clreg results store (no runs table)")

    def _create_schema(self) -> None:
        version = self._version()
        if version == 1:
            self._migrate()
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            if self.db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone() is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))

    def _migrate(self) -> None:
        """Schema 1 → 2: verify the rows (by their results), rebuild the runs table with the checksum column
        and status interrupted, seal every row; one transaction. Refused if a row fails its check."""
        found = self.verify()
        if found.failures:
            raise StoreError(f"store {str(self.path)!r} (made by an earlier clreg) was not migrated: "
                             f"{found.summary()}")
        with self.transaction():
            old = [c for c in self._columns()]
            self.db.execute(RUNS_TABLE.replace("IF NOT EXISTS runs", "runs_new"))
            self.db.execute(f"INSERT INTO runs_new ({', '.join(old)}) SELECT {', '.join(old)} FROM runs")
            self.db.execute("DROP TABLE runs")
            self.db.execute("ALTER TABLE runs_new RENAME TO runs")
            rows = self.db.execute("SELECT key, status, result FROM runs").fetchall()
            self.db.executemany("UPDATE runs SET checksum = ? WHERE key = ?",
                                [(checksum(key, status, _load(result)), key) for key, status, result in rows])
            self.db.execute("UPDATE meta SET value = ? WHERE name = 'schema'", (str(SCHEMA_VERSION),))
        self.migrated = (f"store {str(self.path)!r} was made by an earlier clreg: its {len(rows)} run(s) passed "
                         "their check and now carry checksums")

    def verify(self) -> Verification:
        """Check every row: its checksum (where it has one; a sealed store's finished rows must) and, for a
        finished run, its result (`check_result`); and every sweep's specification. Reads only."""
        from clreg.sweeps.spec import SpecError, stored_spec

        out = Verification()
        sealed = "checksum" in self._columns()
        query = "SELECT key, config, status, result" + (", checksum" if sealed else ", NULL") + " FROM runs ORDER BY key"
        for key, config, status, text, stored in self.db.execute(query):
            out.checked += 1
            row = {"key": key, "config": config}
            try:
                result = _load(text)
            except ValueError:
                out.failures.append(f"{describe(row)}: its result is not JSON")
                continue
            if stored is None and sealed and status in FINISHED:
                out.failures.append(f"{describe(row)}: no checksum")
                continue
            if stored is not None and stored != checksum(key, status, result):
                out.failures.append(f"{describe(row)}: checksum mismatch (the stored result was changed)")
                continue
            out.unsealed += stored is None and status in FINISHED
            try:
                check_result(status, result)
            except ResultError as err:
                out.failures.append(f"{describe(row)}: {err}")
        for name, text in self.db.execute("SELECT name, spec FROM sweeps"):
            try:
                stored_spec(_load(text))
            except (ValueError, SpecError) as err:
                out.failures.append(f"sweep {name!r}: {err}")
        return out

    def check(self) -> None:
        """Raise StoreError naming the rows that fail `verify`."""
        found = self.verify()
        if found.failures:
            raise StoreError(f"store {str(self.path)!r}: {found.summary()}. Nothing was written to it; "
                             f"`clreg store verify {self.path}` lists every row")

    @contextmanager
    def transaction(self) -> Iterator[None]:
        """BEGIN IMMEDIATE … COMMIT (ROLLBACK on error): the write lock is taken at the start."""
        self.db.execute("BEGIN IMMEDIATE")
        try:
            yield
        except BaseException:
            self.db.execute("ROLLBACK")
            raise
        self.db.execute("COMMIT")

    def close(self) -> None:
        """Close the connection."""
        self.db.close()

    # -- runs -----------------------------------------------------------------------------------

    def is_stale(self, host: str | None, pid: int | None, heartbeat: float | None) -> bool:
        """True if a running row's owner is gone: a dead pid on this host, else an old heartbeat."""
        if host == self.host and pid is not None:
            return not _pid_alive(pid)
        return heartbeat is None or time.time() - heartbeat > self.stale_after

    def claim(self, key: str, config: dict, retry_failed: bool = True) -> bool:
        """Mark run `key` running for this process if nobody has it: absent, pending, interrupted, failed
        (when `retry_failed`) or running with a dead owner. False if it is finished or owned by a live worker."""
        now = time.time()
        with self.transaction():
            row = self.db.execute("SELECT status, host, pid, heartbeat FROM runs WHERE key = ?", (key,)).fetchone()
            if row is not None:
                status, host, pid, heartbeat = row
                if status in FINISHED or (status == "failed" and not retry_failed):
                    return False
                if status == "running" and not self.is_stale(host, pid, heartbeat):
                    return False
            self.db.execute(
                "INSERT INTO runs (key, config, status, attempts, host, pid, claimed, heartbeat, checksum) "
                "VALUES (?, ?, 'running', 1, ?, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET status = 'running', "
                "attempts = attempts + 1, host = excluded.host, pid = excluded.pid, claimed = excluded.claimed, "
                "heartbeat = excluded.heartbeat, error = NULL, message = NULL, result = NULL, "
                "checksum = excluded.checksum",
                (key, json.dumps(config, sort_keys=True), self.host, self.pid, now, now, checksum(key, "running", None)))
        return True

    def add_pending(self, runs: list[tuple[str, dict]]) -> None:
        """Record runs a sweep needs next as pending (runs already in the store are left as they are)."""
        if runs:
            with self.transaction():
                self.db.executemany("INSERT INTO runs (key, config, status, checksum) VALUES (?, ?, 'pending', ?) "
                                    "ON CONFLICT (key) DO NOTHING",
                                    [(key, json.dumps(config, sort_keys=True), checksum(key, "pending", None))
                                     for key, config in runs])

    def heartbeat(self, keys: list[str]) -> None:
        """Tell other workers that this process still runs `keys`."""
        if keys:
            with self.transaction():
                self.db.executemany("UPDATE runs SET heartbeat = ? WHERE key = ? AND status = 'running' AND pid = ?",
                                    [(time.time(), key, self.pid) for key in keys])

    def finish(self, key: str, record: dict) -> bool:
        """Record a run's outcome (`record` from clreg.sweeps.executors.execute); False if another worker
        finished it first (its result is kept)."""
        status = record["status"]
        if status not in ("done", "failed", "diverged"):
            raise ValueError(f"a finished run's status must be done, failed or diverged, got {status!r}")
        result = record.get("result")
        with self.transaction():
            cur = self.db.execute(
                "UPDATE runs SET status = ?, result = ?, error = ?, message = ?, diverged_step = ?, finished = ?, "
                "seconds = ?, versions = ?, machine = ?, host = ?, pid = ?, checksum = ? "
                "WHERE key = ? AND status NOT IN ('done', 'diverged')",
                (status, _json(result), record.get("error"), record.get("message"),
                 record.get("diverged_step"), time.time(),
                 record.get("seconds"), _json(record.get("versions")), _json(record.get("machine")),
                 record.get("host", self.host), self.pid, checksum(key, status, _roundtrip(result)), key))
            return cur.rowcount == 1

    def release(self, keys: list[str], error: str) -> None:
        """Runs this process claimed but will not finish (Ctrl-C, an error of the driver): interrupted, to
        be run again by the next sweep."""
        with self.transaction():
            self.db.executemany("UPDATE runs SET status = 'interrupted', error = ?, message = ?, finished = ?, "
                                "result = NULL, checksum = ? WHERE key = ? AND status = 'running' AND pid = ?",
                                [(error, error, time.time(), checksum(key, "interrupted", None), key, self.pid)
                                 for key in keys])

    def add_finished(self, runs: dict[str, dict], sweeps: dict[str, dict]) -> tuple[int, list[str]]:
        """Take in finished runs (key → row with config, status, result and what else a row holds) and
        sweep specifications, in one transaction. A run the store holds finished, and a sweep it knows,
        are kept as they are. Returns (runs added, names of the sweeps added)."""
        columns = ("status", "result", "error", "message", "diverged_step", "attempts", "host", "claimed", "finished",
                   "seconds", "versions", "machine", "checksum")
        encoded = ("result", "versions", "machine")
        with self.transaction():
            added = 0
            for key, row in runs.items():
                if row["status"] not in FINISHED:
                    raise ValueError(f"run {key}: only finished runs are added, not {row['status']!r} ones")
                row = {**row, "checksum": checksum(key, row["status"], _roundtrip(row.get("result")))}
                values = [_json(row.get(c)) if c in encoded else row.get(c) for c in columns]
                values[columns.index("attempts")] = values[columns.index("attempts")] or 1
                cur = self.db.execute(
                    f"INSERT INTO runs (key, config, {', '.join(columns)}) VALUES ({', '.join('?' * (len(columns) + 2))}) "
                    f"ON CONFLICT (key) DO UPDATE SET {', '.join(f'{c} = excluded.{c}' for c in columns)}, pid = NULL "
                    "WHERE runs.status NOT IN ('done', 'diverged')",
                    (key, json.dumps(row["config"], sort_keys=True), *values))
                added += cur.rowcount
            known = {name for (name,) in self.db.execute("SELECT name FROM sweeps")}
            new = [name for name in sweeps if name not in known]
            self.db.executemany("INSERT INTO sweeps VALUES (?, ?, ?)",
                                [(name, json.dumps(sweeps[name], sort_keys=True), time.time()) for name in new])
        return added, new

    def get(self, key: str) -> dict | None:
        """One run as a dict (config and result decoded), or None."""
        cur = self.db.execute("SELECT * FROM runs WHERE key = ?", (key,))
        row = cur.fetchone()
        return None if row is None else _decode(cur.description, row)

    def runs(self, status: str | None = None) -> list[dict]:
        """All runs (or those with `status`), decoded, in the order they were first claimed."""
        query, args = "SELECT * FROM runs", ()
        if status is not None:
            query, args = query + " WHERE status = ?", (status,)
        cur = self.db.execute(query + " ORDER BY claimed, key", args)
        return [_decode(cur.description, row) for row in cur.fetchall()]

    def counts(self) -> dict[str, int]:
        """Number of runs per status."""
        return dict(self.db.execute("SELECT status, COUNT(*) FROM runs GROUP BY status").fetchall())

    # -- sweeps ---------------------------------------------------------------------------------

    def save_sweep(self, name: str, spec: dict) -> None:
        """Keep a sweep's validated specification (plain data) so that `clreg report` can rebuild its tables."""
        with self.transaction():
            self.db.execute("INSERT INTO sweeps VALUES (?, ?, ?) ON CONFLICT (name) DO UPDATE SET spec = excluded.spec, "
                            "updated = excluded.updated", (name, json.dumps(spec, sort_keys=True), time.time()))

    def sweeps(self) -> dict[str, dict]:
        """Every sweep's specification by name."""
        return {name: json.loads(spec) for name, spec in self.db.execute("SELECT name, spec FROM sweeps ORDER BY updated")}


def _connect_readonly(path: Path) -> sqlite3.Connection:
    """A read-only connection. A WAL store whose directory is read-only and has no -shm file cannot be
    opened with mode=ro; it is then opened as immutable (nobody can be writing it)."""
    uri = path.resolve().as_uri()
    try:
        db = sqlite3.connect(f"{uri}?mode=ro", uri=True, timeout=60.0, isolation_level=None)
        db.execute("SELECT count(*) FROM sqlite_master").fetchone()
        return db
    except sqlite3.OperationalError:
        return sqlite3.connect(f"{uri}?immutable=1", uri=True, timeout=60.0, isolation_level=None)


def _json(value) -> str | None:
    return None if value is None else json.dumps(value)


def _load(text: str | None):
    return None if text is None else json.loads(text)


def _roundtrip(value):
    """`value` as it reads back from the store (tuples become lists, ...): what the checksum covers."""
    return _load(_json(value))


def _decode(description, row) -> dict:
    out = dict(zip([d[0] for d in description], row))
    for name in ("config", "result", "versions", "machine"):
        if out.get(name) is not None:
            out[name] = json.loads(out[name])
    return out
