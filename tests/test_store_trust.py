"""Results that cannot be silently wrong: checksummed store rows, checked imports and run outputs, damaged or
read-only stores, sweep limits and progress, strict YAML, machine and did-not-learn notes in reports."""
import json
import os
import re
import sqlite3
from pathlib import Path

import numpy as np
import pytest
import yaml

from clreg.sweeps.importing import ImportFileError, import_files
from clreg.sweeps.plan import SweepDriver, remaining
from clreg.sweeps.report import write_report
from clreg.sweeps.spec import SpecError, load_spec, parse_spec
from clreg.sweeps.store import Store, StoreError, check_result
from clreg.train.config import RunConfig, read_run_file
from clreg.train.metrics import summary
from clreg_cli import invoke as cli

REPO = Path(__file__).resolve().parents[1]
EXPORTS = [REPO / "experiments/results/sweeps/pmnist-full-si-sos/runs.json",
           REPO / "experiments/results/sweeps/pmnist-table1-full/runs.json"]
BASE = {"benchmark": "permuted-digits", "settings": {"tasks": 2, "epochs": 1, "hidden": [8]}}
MACHINE = {"cpu_model": "AMD EPYC", "cpu_capability": "AVX512", "torch_threads": 1}


def result_of(matrix, **extra):
    """A done run's result as a run writes it: the matrix and its metrics, computed by clreg.train.metrics."""
    return {"accuracy_matrix": matrix, **summary(np.asarray(matrix)), **extra}



def sweep_store(path, machines=(MACHINE, MACHINE), flags=(False, False), accuracy=0.92):
    """A store holding a finished one-method sweep (seeds 0 and 1, c = 1 on test): its spec and store."""
    spec = parse_spec({**BASE, "name": "g", "seeds": 2, "search": {"evaluate_on": "test"},
                       "methods": {"SOS": {"method": "sos", "c": 1}}})
    store = Store(path)
    store.save_sweep(spec.name, spec.to_dict())
    for seed, machine, flag in zip((0, 1), machines, flags):
        x = accuracy + 0.01 * seed  # average accuracy: the last row's mean, x
        config = spec.config(spec.entries[0], 1.0, False, seed, "test")
        extra = {"did_not_learn": True, "chance": 0.1} if flag else {}
        store.claim(config.key(), config.canonical())
        store.finish(config.key(), {"status": "done", "machine": machine,
                                    "result": result_of([[x, 0.5], [x, x]], **extra)})
    return spec, store


# -- item 1: checksums, damaged and read-only stores ---------------------------------------------------------


def flip_digit(path, text):
    """Change one digit of `text` inside the SQLite file (as a bad disk or hand would): SQLite's own
    integrity check still passes."""
    data = path.read_bytes()
    at = data.index(text.encode())
    digit = at + len(text) - 1
    path.write_bytes(data[:digit] + (b"4" if data[digit:digit + 1] != b"4" else b"5") + data[digit + 1:])
    assert sqlite3.connect(path).execute("PRAGMA integrity_check").fetchone() == ("ok",)


def test_a_changed_stored_number_is_found_and_named(tmp_path, monkeypatch, capsys):
    path = tmp_path / "s.sqlite"
    _, store = sweep_store(path, accuracy=0.92)
    store.close()
    code, out, _ = cli(monkeypatch, capsys, "store", "verify", path)
    assert code == 0 and "2 run(s) checked, all pass" in out and "2 done" in out
    flip_digit(path, "0.93")  # seed 1's A[0, 0]
    found = Store(path, readonly=True).verify()
    assert len(found.failures) == 1 and "sos c=1 seed 1 (test)" in found.failures[0] and "checksum" in found.failures[0]
    code, out, err = cli(monkeypatch, capsys, "store", "verify", path)
    assert code == 2 and "FAILED sos c=1 seed 1 (test)" in out and err.count("\n") == 1, err
    code, _, err = cli(monkeypatch, capsys, "report", path, "--out-dir", tmp_path / "report")
    assert code == 2 and "1 of 2 row(s) failed the check" in err and err.count("\n") == 1
    assert not (tmp_path / "report" / "table.md").exists()  # no number of that store reported
    good = tmp_path / "good.json"
    good.write_text(json.dumps({"config": {"benchmark": "permuted-digits", "method": "si", "c": 3},
                                **result_of([[0.5]])}))
    before = path.read_bytes()
    code, _, err = cli(monkeypatch, capsys, "store", "import", path, good)
    assert code == 2 and "failed the check" in err and path.read_bytes() == before  # nothing written
    spec_file = tmp_path / "g.yaml"
    spec_file.write_text(yaml.safe_dump({**BASE, "name": "g", "methods": {"SOS": {"method": "sos", "c": 1}}}))
    code, _, err = cli(monkeypatch, capsys, "sweep", spec_file, "--store", path, "--threads", "1")
    assert code == 2 and "failed the check" in err and path.read_bytes() == before


V1_RUNS = """CREATE TABLE runs (key TEXT PRIMARY KEY, config TEXT NOT NULL, status TEXT NOT NULL CHECK (status IN
    ('pending', 'running', 'done', 'failed', 'diverged')), result TEXT, error TEXT, message TEXT, diverged_step INTEGER,
    attempts INTEGER NOT NULL DEFAULT 0, host TEXT, pid INTEGER, claimed REAL, heartbeat REAL, finished REAL,
    seconds REAL, versions TEXT, machine TEXT)"""


def v1_store(path, result):
    """A store as clreg wrote it before checksums (schema 1)."""
    db = sqlite3.connect(path)
    db.execute(V1_RUNS)
    db.execute("CREATE TABLE sweeps (name TEXT PRIMARY KEY, spec TEXT NOT NULL, updated REAL NOT NULL)")
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema', '1')")
    config = RunConfig.from_dict({"benchmark": "permuted-digits", "method": "si", "c": 1})
    db.execute("INSERT INTO runs (key, config, status, result) VALUES (?, ?, 'done', ?)",
               (config.key(), json.dumps(config.canonical()), json.dumps(result)))
    db.execute("INSERT INTO runs (key, config, status) VALUES ('p', '{}', 'pending')")
    db.commit()
    db.close()
    return config.key()


def test_an_earlier_store_is_sealed_on_first_writable_open(tmp_path):
    path = tmp_path / "old.sqlite"
    key = v1_store(path, result_of([[0.9]]))
    readonly = Store(path, readonly=True)  # read-only: verified by results, not migrated
    found = readonly.verify()
    assert (found.checked, found.unsealed, found.failures) == (2, 1, []) and readonly.migrated is None
    readonly.close()
    store = Store(path)
    assert "1 run(s)" not in store.migrated and "2 run(s) passed their check" in store.migrated
    assert store.verify().failures == [] and store.get(key)["checksum"]
    store.claim("p", {})
    store.release(["p"], "interrupted: KeyboardInterrupt")  # the rebuilt table takes the new status
    assert store.get("p")["status"] == "interrupted" and Store(path).migrated is None  # once
    bad = tmp_path / "bad.sqlite"
    v1_store(bad, {"accuracy_matrix": "not a matrix"})  # imported by a clreg that took anything
    with pytest.raises(StoreError, match="was not migrated: 1 of 2 row.s. failed the check: si c=1 seed 0"):
        Store(bad)
    assert sqlite3.connect(bad).execute("SELECT value FROM meta").fetchone() == ("1",)  # left as it was


@pytest.mark.parametrize("damage", ["random", "truncated", "directory", "text"])
def test_a_damaged_store_is_one_line_and_exit_2(tmp_path, monkeypatch, capsys, damage):
    path = tmp_path / "s.sqlite"
    if damage == "directory":
        path.mkdir()
    elif damage == "text":
        path.write_text("results: none\n" * 50)
    else:
        _, store = sweep_store(path)
        store.close()
        data = path.read_bytes()
        path.write_bytes(os.urandom(len(data)) if damage == "random" else data[:len(data) // 2 + 100])
    before = path.read_bytes() if path.is_file() else None
    for args in (["store", "verify", path], ["report", path, "--out-dir", tmp_path / "r"],
                 ["store", "import", path, EXPORTS[0]]):
        code, _, err = cli(monkeypatch, capsys, *args)
        assert code == 2 and err.startswith("clreg: error:") and err.count("\n") == 1, (args, err)
    assert (path.read_bytes() if path.is_file() else None) == before


def test_a_read_only_store_is_reported_and_verified_but_not_written(tmp_path, monkeypatch, capsys):
    path = tmp_path / "s.sqlite"
    _, store = sweep_store(path)
    store.close()
    before = path.read_bytes()
    code, out, _ = cli(monkeypatch, capsys, "store", "verify", path)
    assert code == 0
    code, out, _ = cli(monkeypatch, capsys, "report", path, "--out-dir", tmp_path / "r")
    assert code == 0 and "92.50 ± 0.50 (2)" in out  # seeds 0.92 and 0.93: mean 0.925, s.e. 0.01 / 2
    assert path.read_bytes() == before
    real_access = os.access  # root writes anything: pretend the file is read-only, as for a user
    monkeypatch.setattr(os, "access", lambda p, mode: False if Path(p) == path else real_access(p, mode))
    code, _, err = cli(monkeypatch, capsys, "store", "import", path, EXPORTS[0])
    assert code == 2 and "not writable" in err and err.count("\n") == 1
    assert path.read_bytes() == before


def test_a_store_path_that_is_a_directory_is_refused_before_any_run(tmp_path, monkeypatch, capsys):
    spec_file = tmp_path / "g.yaml"
    spec_file.write_text(yaml.safe_dump({**BASE, "methods": {"si": {"c": 1}}}))
    code, _, err = cli(monkeypatch, capsys, "sweep", spec_file, "--store", tmp_path, "--threads", "1")
    assert code == 2 and "is a directory" in err and err.count("\n") == 1


# -- item 2: imports are checked as fully as a run's own output ------------------------------------------------


def runs_file(path, result=None, config=None, sweeps=None):
    run = {"status": "done", "config": {"benchmark": "permuted-digits", "method": "si", "c": 1, "seed": 4,
                                        **(config or {})},
           "result": result_of([[0.5, 0.2], [0.4, 0.6]]) if result is None else result}
    path.write_text(json.dumps({"sweeps": sweeps or {}, "runs": [run]}))
    return path


GOOD = result_of([[0.5, 0.2], [0.4, 0.6]])


@pytest.mark.parametrize("change, message", [
    ({"result": {**GOOD, "accuracy_matrix": "not a matrix"}}, "accuracy_matrix must be a list of rows"),
    ({"result": {**GOOD, "accuracy_matrix": [[float("nan")]]}}, "accuracy_matrix[0][0] must be a finite number"),
    ({"result": {**GOOD, "accuracy_matrix": None}}, "accuracy_matrix must be a list of rows"),
    ({"result": {**GOOD, "accuracy_matrix": [[0.5, 0.2], [0.4]]}}, "row 2 has 1 entries"),
    ({"result": {**GOOD, "accuracy_matrix": [[0.5, 0.2], [0.4, 1.6]]}}, "accuracy_matrix[1][1] must be in [0, 1]"),
    ({"result": {**GOOD, "average_accuracy": "high"}}, "average_accuracy must be a finite number, got 'high'"),
    ({"result": {**GOOD, "average_accuracy": 0.7}}, "average_accuracy 0.7 is not the accuracy matrix's (0.5)"),
    ({"result": {**GOOD, "mean_forgetting": 0.0}}, "mean_forgetting 0.0 is not the accuracy matrix's"),
    ({"result": {**GOOD, "did_not_learn": "yes"}}, "did_not_learn must be true or false"),
    ({"result": None}, "needs its result"),
    ({"config": {"c": float("nan")}}, "config.c must be a finite number, got nan"),
    ({"config": {"c": float("inf")}}, "config.c must be a finite number, got inf"),  # 1e400 in the JSON
    ({"sweeps": {"g": "pmnist"}}, "sweep 'g': a stored sweep specification must be a mapping"),
])
def test_bad_imports_name_the_run_and_field_and_import_nothing(tmp_path, change, message):
    path = runs_file(tmp_path / "runs.json", **({"result": {}} if change.get("result", 0) is None else change))
    if change.get("result", 0) is None:
        data = json.loads(path.read_text())
        data["runs"][0]["result"] = None
        path.write_text(json.dumps(data))
    if "config" in change:  # as a file would hold it: NaN, or 1e400 (read as inf)
        path.write_text(path.read_text().replace("NaN", "NaN").replace("Infinity", "1e400"))
    with pytest.raises(ImportFileError) as err:
        import_files(tmp_path / "s.sqlite", [path])
    assert message in str(err.value)
    if "sweeps" not in change:
        assert "run 0 (si c=1 seed 4)" in str(err.value) or "run 0 (si seed 4)" in str(err.value)
    assert not (tmp_path / "s.sqlite").exists()


def test_a_bad_import_is_one_line_exit_2(tmp_path, monkeypatch, capsys):
    path = runs_file(tmp_path / "runs.json", {**GOOD, "average_accuracy": "high"})
    code, _, err = cli(monkeypatch, capsys, "store", "import", tmp_path / "s.sqlite", path)
    assert code == 2 and "average_accuracy must be a finite number" in err and err.count("\n") == 1
    assert not (tmp_path / "s.sqlite").exists()


def test_the_repository_exports_import_cleanly_and_pass_verify(tmp_path, monkeypatch, capsys):
    finished = {(row["config"]["method"], row["config"].get("c"), row["config"].get("seed"), row["key"])
                for path in EXPORTS for row in json.loads(path.read_text())["runs"]
                if row["status"] in ("done", "diverged")}  # the exports grow as full-scale runs land
    code, out, err = cli(monkeypatch, capsys, "store", "import", tmp_path / "s.sqlite", *EXPORTS)
    assert code == 0, err
    assert f"{len(finished)} run(s) added" in out and "sweep(s) pmnist-full, pmnist-table1-full" in out
    code, out, _ = cli(monkeypatch, capsys, "store", "verify", tmp_path / "s.sqlite")
    assert code == 0 and f"{len(finished)} run(s) checked, all pass" in out


def test_a_runs_own_invalid_output_is_recorded_as_failed_not_as_a_number(tmp_path):
    class Executor:
        slots, threads = 1, 1

        def __init__(self):
            self.queue = []

        def submit(self, key, config):
            self.queue.append(key)

        def wait(self, timeout):
            return [(self.queue.pop(0), {"status": "done", "seconds": 0.0,
                                         "result": {**GOOD, "average_accuracy": float("nan")}})]

        def shutdown(self, cancel=False):
            pass

    spec = parse_spec({**BASE, "seeds": 1, "search": {"evaluate_on": "test"}, "methods": {"si": {"c": 5}}})
    store = Store(tmp_path / "s.sqlite")
    states = SweepDriver(spec, store, Executor(), log=lambda line: None).run()
    (row,) = store.runs()
    assert row["status"] == "failed" and "invalid result: average_accuracy must be a finite number" in row["message"]
    assert states["si"].failed and store.verify().failures == []
    check_result("done", GOOD)  # the reference: what a run writes passes


# -- items 4, 5: limits and progress -------------------------------------------------------------------------


def test_a_sweep_of_a_million_runs_is_refused_before_planning(tmp_path, monkeypatch, capsys):
    with pytest.raises(SpecError, match=r"plans 1000000 runs, more than the limit of 10000.*--max-runs N"):
        parse_spec({**BASE, "seeds": 1_000_000, "methods": {"si": {"c": 1}}})
    grid = {name: [1, 2, 3, 4, 5, 6, 7, 8, 9, 10] for name in ("epochs", "batch_size", "seed_offset")[:2]}
    with pytest.raises(SpecError, match=r"plans 200002 runs"):  # 100 lines × 2 re-init × 1000 c... refused early
        parse_spec({**BASE, "seeds": 2, "methods": {"si": {"c": list(range(1, 1001)), "reinit": [True, False],
                                                           "grid": grid}}})
    assert len(parse_spec({**BASE, "seeds": 20_000, "methods": {"si": {"c": 1}}}, max_runs=30_000).seeds) == 20_000
    spec_file = tmp_path / "g.yaml"
    spec_file.write_text(yaml.safe_dump({**BASE, "methods": {"si": {"c": 1}}}))
    code, _, err = cli(monkeypatch, capsys, "sweep", spec_file, "--seeds", "1000000", "--store", tmp_path / "s.sqlite")
    assert code == 2 and "plans 1000000 runs" in err and not (tmp_path / "s.sqlite").exists()


def test_progress_lines_show_done_of_total_and_time_left(tmp_path):
    from test_sweep_plan import FakeExecutor

    spec = parse_spec({**BASE, "seeds": 3, "methods": {"si": {"c": [1, 2, 5, 10]}}})  # 4 search + 3 final runs
    lines = []
    SweepDriver(spec, Store(tmp_path / "s.sqlite"), FakeExecutor(), log=lines.append).run()
    assert [line.split("]")[0].split(",")[0] for line in lines] == [f"[{n}/7 done" for n in range(1, 8)]
    assert all("left" in line for line in lines)
    assert remaining(0.0, 0, 7) == "estimating time left"
    assert remaining(600.0, 2, 8) == "about 30 min left" and remaining(7200.0, 1, 2) == "about 2 h 00 min left"


# -- items 6, 7: checks before anything is created; strict YAML ------------------------------------------------


def test_missing_data_and_missing_ray_fail_before_a_store_is_created(tmp_path, monkeypatch, capsys):
    spec_file = tmp_path / "g.yaml"
    spec_file.write_text(yaml.safe_dump({"benchmark": "permuted-mnist", "methods": {"si": {"c": 1}}}))
    store = tmp_path / "s.sqlite"
    code, _, err = cli(monkeypatch, capsys, "sweep", spec_file, "--store", store, "--data-dir", tmp_path / "nowhere")
    assert code in (1, 2) and err.count("\n") == 1 and not store.exists()
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "ray" else real(name, *a))
    spec_file.write_text(yaml.safe_dump({**BASE, "methods": {"si": {"c": 1}}}))
    code, _, err = cli(monkeypatch, capsys, "sweep", spec_file, "--store", store, "--backend", "ray")
    assert code == 2 and "needs Ray, which is not installed" in err and not store.exists()


@pytest.mark.parametrize("text, message", [
    (b"benchmark: permuted-digits\nmethods:\n  si: {c: 1}\n  si: {c: 2}\n", "duplicate key 'si' (first on line 3, again on line 4)"),
    (b"benchmark: permuted-digits\nname: caf\xe9\nmethods: {si: {c: 1}}\n", "is not UTF-8 text: byte 0xe9 at offset 36"),
])
def test_sweep_and_run_files_are_read_strictly(tmp_path, monkeypatch, capsys, text, message):
    path = tmp_path / "g.yaml"
    path.write_bytes(text)
    code, _, err = cli(monkeypatch, capsys, "sweep", path, "--dry-run")
    assert code == 2 and message in err and str(path) in err and err.count("\n") == 1, err
    with pytest.raises(SpecError, match=re.escape(message)):
        load_spec(path)
    run_file = tmp_path / "run.yaml"
    run_file.write_bytes(text.replace(b"methods:\n  si: {c: 1}\n  si: {c: 2}\n", b"c: 1\nc: 2\n")
                         .replace(b"methods: {si: {c: 1}}\n", b""))
    with pytest.raises(ValueError, match="duplicate key 'c'|not UTF-8"):
        read_run_file(run_file)


# -- items 3, 8, 9, 10: the report -----------------------------------------------------------------------------


def test_report_flags_rows_from_different_machines_and_runs_that_did_not_learn(tmp_path):
    other = {**MACHINE, "torch_threads": 2}
    _, store = sweep_store(tmp_path / "s.sqlite", machines=(MACHINE, other), flags=(False, True))
    data = write_report(store, tmp_path / "r")
    table = (tmp_path / "r" / "table.md").read_text()
    assert table == data["markdown"]
    assert "| SOS | 92.50 ± 0.50 (2) † |" in table
    assert "† did not learn (ended below chance plus a margin): SOS: 1 of 2 seed(s), chance 10.00%" in table
    assert ("different machines or thread counts" in table and "not part of a run's key" in table
            and "AMD EPYC, AVX512, 1 thread(s): SOS; AMD EPYC, AVX512, 2 thread(s): SOS" in table)
    _, same = sweep_store(tmp_path / "same.sqlite")
    assert "different machines" not in write_report(same, tmp_path / "r2")["markdown"]
    _, unknown = sweep_store(tmp_path / "u.sqlite", machines=(None, MACHINE))  # imported without a machine
    assert "unknown, unknown, unknown thread(s): SOS" in write_report(unknown, tmp_path / "r3")["markdown"]


def test_report_shows_interrupted_runs_and_counts_distinct_figure_files(tmp_path, monkeypatch):
    spec, store = sweep_store(tmp_path / "s.sqlite")
    config = spec.config(spec.entries[0], 1.0, False, 1, "test")
    store.db.execute("DELETE FROM runs WHERE key = ?", (config.key(),))
    store.claim(config.key(), config.canonical())
    store.release([config.key()], "interrupted: KeyboardInterrupt")
    from clreg.sweeps import report

    def twice(spec, state, stem):  # a name written twice (as colliding names did) is one file
        Path(f"{stem}.png").write_bytes(b"png")
        return [Path(f"{stem}.png"), Path(f"{stem}.png")]
    monkeypatch.setattr(report, "plot_matrix", twice)
    data = write_report(store, tmp_path / "r")
    assert "Interrupted runs (not failed, not done; the next `clreg sweep` runs them): SOS: 1" in data["markdown"]
    assert "1 run(s) interrupted (the next sweep runs them)" in (tmp_path / "r" / "table.csv").read_text()
    files = sorted(str(p) for p in (tmp_path / "r").iterdir() if p.suffix in (".png", ".svg"))
    assert data["figures"] == files
