"""The results store: one SQLite file (WAL mode), one row per run keyed by the hash of its config.

A row's status goes pending → running → done | failed | diverged. Claiming a run and recording its
result are each one transaction, so a crash loses at most the runs in flight, and any number of
processes (sweep drivers on one machine or on a shared disk) can use one store: a run is claimed by
one of them only. A `running` row whose owner is gone (a dead process on this host, or no heartbeat
for `stale_after` seconds) is claimed again. Rows hold JSON text only; nothing is unpickled.
"""
from __future__ import annotations

import json
import os
import socket
import sqlite3
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

STATUSES = ("pending", "running", "done", "failed", "diverged")
FINISHED = ("done", "diverged")  # a result: never run again
SCHEMA_VERSION = 1
SCHEMA = """
CREATE TABLE IF NOT EXISTS runs (
    key TEXT PRIMARY KEY,
    config TEXT NOT NULL,
    status TEXT NOT NULL CHECK (status IN ('pending', 'running', 'done', 'failed', 'diverged')),
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
    machine TEXT
);
CREATE TABLE IF NOT EXISTS sweeps (
    name TEXT PRIMARY KEY,
    spec TEXT NOT NULL,
    updated REAL NOT NULL
);
CREATE TABLE IF NOT EXISTS meta (name TEXT PRIMARY KEY, value TEXT NOT NULL);
"""


class StoreError(ValueError):
    """A path that is not a clreg store, or a store of another schema version."""


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, owned by someone else
        return True
    return True


class Store:
    """A results store at `path` (created if missing). One connection per process; not thread-shared."""

    def __init__(self, path: str | Path, stale_after: float = 600.0, create: bool = True):
        self.path = Path(path)
        if not create and not self.path.is_file():
            raise StoreError(f"no results store at {str(self.path)!r}")
        if self.path.is_dir():
            raise StoreError(f"store path {str(self.path)!r} is a directory; give a file name such as sweep.sqlite")
        if create and not self.path.parent.is_dir():
            try:
                self.path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as err:
                raise StoreError(f"store path {str(self.path)!r}: cannot create directory {str(self.path.parent)!r} "
                                 f"({err.strerror or err})") from None
        self.stale_after = stale_after
        self.host, self.pid = socket.gethostname(), os.getpid()
        try:
            self.db = sqlite3.connect(self.path, timeout=60.0, isolation_level=None)
            self.db.execute("PRAGMA journal_mode=WAL")
            self.db.execute("PRAGMA synchronous=NORMAL")
            self._create_schema()
        except sqlite3.DatabaseError as err:
            raise StoreError(f"{str(self.path)!r} is not a clreg results store (SQLite: {err})") from None

    def _create_schema(self) -> None:
        with self.transaction():
            for statement in SCHEMA.split(";"):
                if statement.strip():
                    self.db.execute(statement)
            columns = {name for _, name, *_ in self.db.execute("PRAGMA table_info(runs)")}
            if "message" not in columns:  # stores made before the one-line message was kept
                self.db.execute("ALTER TABLE runs ADD COLUMN message TEXT")
            row = self.db.execute("SELECT value FROM meta WHERE name = 'schema'").fetchone()
            if row is None:
                self.db.execute("INSERT INTO meta VALUES ('schema', ?)", (str(SCHEMA_VERSION),))
            elif row[0] != str(SCHEMA_VERSION):
                raise StoreError(f"store {str(self.path)!r} has schema version {row[0]}; this clreg reads {SCHEMA_VERSION}")

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
        """Mark run `key` running for this process if nobody has it: absent, pending, failed (when
        `retry_failed`) or running with a dead owner. False if it is finished or owned by a live worker."""
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
                "INSERT INTO runs (key, config, status, attempts, host, pid, claimed, heartbeat) "
                "VALUES (?, ?, 'running', 1, ?, ?, ?, ?) ON CONFLICT (key) DO UPDATE SET status = 'running', "
                "attempts = attempts + 1, host = excluded.host, pid = excluded.pid, claimed = excluded.claimed, "
                "heartbeat = excluded.heartbeat, error = NULL, message = NULL",
                (key, json.dumps(config, sort_keys=True), self.host, self.pid, now, now))
        return True

    def add_pending(self, runs: list[tuple[str, dict]]) -> None:
        """Record runs a sweep needs next as pending (runs already in the store are left as they are)."""
        if runs:
            with self.transaction():
                self.db.executemany("INSERT INTO runs (key, config, status) VALUES (?, ?, 'pending') "
                                    "ON CONFLICT (key) DO NOTHING",
                                    [(key, json.dumps(config, sort_keys=True)) for key, config in runs])

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
        with self.transaction():
            cur = self.db.execute(
                "UPDATE runs SET status = ?, result = ?, error = ?, message = ?, diverged_step = ?, finished = ?, "
                "seconds = ?, versions = ?, machine = ?, host = ?, pid = ? WHERE key = ? AND status NOT IN ('done', 'diverged')",
                (status, _json(record.get("result")), record.get("error"), record.get("message"),
                 record.get("diverged_step"), time.time(),
                 record.get("seconds"), _json(record.get("versions")), _json(record.get("machine")),
                 record.get("host", self.host), self.pid, key))
            return cur.rowcount == 1

    def release(self, keys: list[str], error: str) -> None:
        """Runs this process claimed but will not finish (interrupted): failed, to be retried."""
        with self.transaction():
            self.db.executemany("UPDATE runs SET status = 'failed', error = ?, message = ?, finished = ? "
                                "WHERE key = ? AND status = 'running' AND pid = ?",
                                [(error, error, time.time(), key, self.pid) for key in keys])

    def add_finished(self, runs: dict[str, dict], sweeps: dict[str, dict]) -> tuple[int, list[str]]:
        """Take in finished runs (key → row with config, status, result and what else a row holds) and
        sweep specifications, in one transaction. A run the store holds finished, and a sweep it knows,
        are kept as they are. Returns (runs added, names of the sweeps added)."""
        columns = ("status", "result", "error", "message", "diverged_step", "attempts", "host", "claimed", "finished",
                   "seconds", "versions", "machine")
        encoded = ("result", "versions", "machine")
        with self.transaction():
            added = 0
            for key, row in runs.items():
                if row["status"] not in FINISHED:
                    raise ValueError(f"run {key}: only finished runs are added, not {row['status']!r} ones")
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


def _json(value) -> str | None:
    return None if value is None else json.dumps(value)


def _decode(description, row) -> dict:
    out = dict(zip([d[0] for d in description], row))
    for name in ("config", "result", "versions", "machine"):
        if out.get(name) is not None:
            out[name] = json.loads(out[name])
    return out
