"""The results store: claims, results, stale owners, concurrent processes, refusal of non-stores."""
import json
import multiprocessing
import os
import re
import sqlite3
import subprocess
import sys
import time

import pytest

from clreg.sweeps.store import Store, StoreError


def test_claim_finish_and_no_second_claim(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    assert store.claim("k1", {"c": 1.0})
    assert not store.claim("k1", {"c": 1.0})  # running, owner (this process) alive
    assert store.finish("k1", {"status": "done", "result": {"average_accuracy": 0.5}, "seconds": 2.0,
                               "versions": {"torch": "x"}, "machine": {"cpu_count": 2}})
    assert not store.claim("k1", {"c": 1.0})  # done: never run again
    row = store.get("k1")
    assert row["status"] == "done" and row["result"] == {"average_accuracy": 0.5} and row["attempts"] == 1
    assert row["config"] == {"c": 1.0} and row["versions"] == {"torch": "x"} and row["seconds"] == 2.0
    assert store.counts() == {"done": 1}
    # a second finish (another worker finishing late) keeps the first result
    assert not store.finish("k1", {"status": "done", "result": {"average_accuracy": 0.9}})
    assert store.get("k1")["result"] == {"average_accuracy": 0.5}


def test_failed_runs_are_retried_and_diverged_are_final(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.claim("f", {})
    store.finish("f", {"status": "failed", "error": "boom"})
    assert not store.claim("f", {}, retry_failed=False)
    assert store.claim("f", {})
    assert store.get("f")["attempts"] == 2 and store.get("f")["error"] is None
    store.claim("d", {})
    store.finish("d", {"status": "diverged", "error": "nan", "diverged_step": 17})
    assert not store.claim("d", {}) and store.get("d")["diverged_step"] == 17


def test_run_of_a_dead_process_is_taken_over(tmp_path):
    path = tmp_path / "s.sqlite"
    code = f"from clreg.sweeps.store import Store; Store({str(path)!r}).claim('k', {{}})"
    subprocess.run([sys.executable, "-c", code], check=True, timeout=60)  # claims, then exits: owner dead
    store = Store(path)
    row = store.get("k")
    assert row["status"] == "running" and row["pid"] != os.getpid()
    assert store.claim("k", {})
    assert store.get("k")["attempts"] == 2 and store.get("k")["pid"] == os.getpid()


def test_other_hosts_run_is_stale_only_without_heartbeat(tmp_path):
    store = Store(tmp_path / "s.sqlite", stale_after=60)
    store.claim("k", {})
    store.db.execute("UPDATE runs SET host = 'elsewhere', pid = 1")
    assert not store.claim("k", {})  # fresh heartbeat from another host
    store.db.execute("UPDATE runs SET heartbeat = ?", (time.time() - 120,))
    assert store.claim("k", {})


def test_release_hands_runs_back(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.claim("a", {})
    store.release(["a"], "interrupted: KeyboardInterrupt")
    assert store.get("a")["status"] == "interrupted" and "interrupted" in store.get("a")["error"]
    assert store.claim("a", {})


def _claim_all(path, keys, out):
    store = Store(path)
    mine = []
    for key in keys:
        if store.claim(key, {"key": key}):
            mine.append(key)
            store.finish(key, {"status": "done", "result": {"by": os.getpid()}})
    out.put(mine)


def test_two_processes_claim_each_run_once(tmp_path):
    path = tmp_path / "s.sqlite"
    Store(path)
    keys = [f"run{i}" for i in range(300)]
    ctx = multiprocessing.get_context("spawn")
    out = ctx.Queue()
    workers = [ctx.Process(target=_claim_all, args=(path, keys if i == 0 else keys[::-1], out)) for i in range(2)]
    for w in workers:
        w.start()
    claimed = [out.get(timeout=120) for _ in workers]
    for w in workers:
        w.join(timeout=60)
    assert sorted(claimed[0] + claimed[1]) == sorted(keys)  # every run exactly once between the two
    store = Store(path)
    rows = store.runs()
    assert len(rows) == 300 and all(r["attempts"] == 1 and r["status"] == "done" for r in rows)


def test_not_a_store_is_refused(tmp_path):
    junk = tmp_path / "junk.sqlite"
    junk.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(StoreError, match="is not a clreg results store"):
        Store(junk)
    with pytest.raises(StoreError, match="no results store at"):
        Store(tmp_path / "missing.sqlite", create=False)
    with pytest.raises(StoreError, match="is a directory"):
        Store(tmp_path)
    other = tmp_path / "other.sqlite"
    db = sqlite3.connect(other)
    db.execute("CREATE TABLE meta (name TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("INSERT INTO meta VALUES ('schema', '99')")
    db.commit()
    db.close()
    with pytest.raises(StoreError, match="schema version 99"):
        Store(other)


def test_rows_are_json_text(tmp_path):
    store = Store(tmp_path / "s.sqlite")
    store.claim("k", {"hidden": [4, 4]})
    store.finish("k", {"status": "done", "result": {"accuracy_matrix": [[1.0]]}})
    raw = sqlite3.connect(tmp_path / "s.sqlite").execute("SELECT config, result FROM runs").fetchone()
    assert json.loads(raw[0]) == {"hidden": [4, 4]} and json.loads(raw[1]) == {"accuracy_matrix": [[1.0]]}


def result_of(matrix):
    """A done run's result as a run writes it: the matrix and its metrics (clreg.train.metrics)."""
    from clreg.train.metrics import summary

    import numpy as np
    return {"accuracy_matrix": matrix, **summary(np.asarray(matrix))}


def _result_file(path, **config):
    path.write_text(json.dumps({"config": {"benchmark": "permuted-digits", "method": "si", "c": 1, **config},
                                **result_of([[0.5]]), "versions": {"torch": "x"}}))
    return path


SPEC = {"name": "g", "benchmark": "permuted-digits", "settings": {}, "seeds": [0], "search_evaluate_on": "validation",
        "search_seeds": 1, "metric": "average_accuracy", "extend": True, "max_extensions": 4,
        "final_evaluate_on": "test", "entries": [{"label": "si", "method": "si", "c": [1.0], "reinit": [False],
                                                 "settings": {}, "grid": {}}]}


def test_import_keys_runs_by_their_config_and_keeps_finished_rows(tmp_path):
    from clreg.train.config import RunConfig
    from clreg.sweeps.importing import import_files

    store = Store(tmp_path / "s.sqlite")
    config = RunConfig.from_dict({"benchmark": "permuted-digits", "method": "si", "c": 1})
    store.claim(config.key(), config.canonical())
    store.finish(config.key(), {"status": "done", "result": result_of([[0.9]])})
    other = RunConfig.from_dict({"benchmark": "permuted-digits", "method": "si", "c": 2})
    store.claim(other.key(), other.canonical())
    store.release([other.key()], "interrupted")  # interrupted: an imported result replaces it
    a = _result_file(tmp_path / "a.json")  # c = 1 as an int: same run as c = 1.0
    b = _result_file(tmp_path / "b.json", c=2.0)
    runs_file = tmp_path / "runs.json"
    runs_file.write_text(json.dumps({"sweeps": {"g": SPEC}, "runs": [
        {"key": "stale-key", "status": "done", "config": {"benchmark": "permuted-digits", "method": "si", "c": 3},
         "result": result_of([[0.7]]), "seconds": 4.0},
        {"key": "x", "status": "failed", "config": {"benchmark": "permuted-digits"}, "error": "boom"},
        {"status": "diverged", "config": {"benchmark": "permuted-digits", "c": 4}, "result": {"diverged_step": 3}}]}))
    out = import_files(store, [a, b, runs_file])
    assert (out.added, out.kept, out.skipped, out.rekeyed, out.sweeps) == (3, 1, {"failed": 1}, 1, ["g"])
    assert store.get(config.key())["result"]["accuracy_matrix"] == [[0.9]]  # the store's own result kept
    assert store.get(other.key())["status"] == "done" and store.get(other.key())["result"]["accuracy_matrix"] == [[0.5]]
    three = RunConfig.from_dict({"benchmark": "permuted-digits", "method": "si", "c": 3})
    assert store.get(three.key())["seconds"] == 4.0 and store.get("stale-key") is None
    four = RunConfig.from_dict({"benchmark": "permuted-digits", "c": 4})
    assert store.get(four.key())["status"] == "diverged"
    assert store.sweeps() == {"g": SPEC}
    assert store.claim(other.key(), other.canonical()) is False  # a sweep does not run it again


@pytest.mark.parametrize("content, message", [
    ("not json", "is not JSON"),
    ('{"something": 1}', "is neither a runs.json written by `clreg report`"),
    ('{"runs": [{"status": "done", "config": {"benchmark": "permuted-digits", "colour": 1}, "result": {}}]}',
     "run 0 (seed 0): config not readable by this clreg: unknown run setting(s) 'colour'"),
    ('{"runs": [{"status": "finished", "config": {}}]}', "run 0: status 'finished' is not one of pending"),
    ('{"runs": [{"status": "done", "config": {"benchmark": "permuted-digits"}, "result": {}}]}',
     "run 0 (seed 0): result: a done run needs its result with an 'accuracy_matrix'"),
    ('{"runs": [3]}', "run 0: a run must be an object with a 'config' object"),
])
def test_bad_import_files_import_nothing(tmp_path, content, message):
    from clreg.sweeps.importing import ImportFileError, import_files

    good = _result_file(tmp_path / "good.json")
    bad = tmp_path / "bad.json"
    bad.write_text(content)
    with pytest.raises(ImportFileError, match=re.escape(message)):
        import_files(tmp_path / "s.sqlite", [good, bad])
    assert not (tmp_path / "s.sqlite").exists()
    with pytest.raises(ImportFileError, match="no such file"):
        import_files(tmp_path / "s.sqlite", [tmp_path / "missing.json"])
