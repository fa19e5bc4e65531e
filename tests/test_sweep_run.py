"""Sweeps end to end with real (small) training: SIGKILL and re-run, concurrent drivers, Ray, divergence,
resumed runs, reports."""
import json
import os
import signal
import sqlite3
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
import yaml

from clreg.train.callbacks import Callback
from clreg.train.checkpoint import CheckpointError
from clreg.train.config import RunConfig
from clreg.train.metrics import mean_and_stderr
from clreg.sweeps.report import write_report
from clreg.sweeps.store import Store
from clreg.train.steplog import JsonLines, StepLog
from clreg.train.loop import Trainer, load_benchmark

pytestmark = pytest.mark.slow  # real training end to end: minutes
CLREG = [sys.executable, "-c", "from clreg.cli.commands import main; main()"]
SETTINGS = {"tasks": 3, "epochs": 2, "batch_size": 32, "hidden": [64], "lr": 0.001}
SPEC = {"benchmark": "permuted-digits", "settings": SETTINGS, "seeds": 2,
        "search": {"max_extensions": 1},
        "methods": {"si": {"c": [1, 10]}, "ewc": {"method": "fisher", "c": [10, 100]}, "finetune": {}}}


def write_spec(tmp_path, spec=SPEC, name="grid"):
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(spec, allow_unicode=True, sort_keys=False))
    return path


def sweep(spec_path, store, *extra, **kwargs):
    return subprocess.Popen([*CLREG, "sweep", str(spec_path), "--store", str(store), "--threads", "1", *extra],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, **kwargs)


def finish(process, timeout=300):
    out, err = process.communicate(timeout=timeout)
    assert process.returncode == 0, err
    return out, err


def rows(store_path):
    return Store(store_path).runs()


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """An uninterrupted sweep: its store and printed table."""
    tmp = tmp_path_factory.mktemp("reference")
    out, _ = finish(sweep(write_spec(tmp), tmp / "ref.sqlite"))
    return tmp / "ref.sqlite", out


def results_by_key(store_path):
    return {r["key"]: (r["status"], r["result"]["accuracy_matrix"] if r["status"] == "done" else None)
            for r in rows(store_path)}


def test_sigkill_mid_sweep_then_rerun(tmp_path, reference):
    ref_store, ref_table = reference
    total = len(rows(ref_store))
    store = tmp_path / "s.sqlite"
    process = sweep(write_spec(tmp_path), store, start_new_session=True)
    deadline = time.time() + 120
    while time.time() < deadline:  # kill only while a run is in flight: between two runs none is "running"
        status = [r["status"] for r in rows(store)] if store.exists() else []
        if status.count("done") >= 3 and "running" in status:
            break
        time.sleep(0.05)
    os.killpg(process.pid, signal.SIGKILL)
    process.wait()
    before = {r["key"]: r for r in rows(store)}
    done_before = {k: r for k, r in before.items() if r["status"] == "done"}
    assert 3 <= len(done_before) < total  # killed mid-way
    assert any(r["status"] == "running" for r in before.values())  # a run was in flight and is now orphaned

    out, _ = finish(sweep(write_spec(tmp_path), store))
    after = {r["key"]: r for r in rows(store)}
    assert len(after) == total and set(after) == {r["key"] for r in rows(ref_store)}  # no duplicates, nothing missing
    for key, row in done_before.items():  # finished runs were neither lost nor run again
        assert after[key]["finished"] == row["finished"] and after[key]["attempts"] == 1
    assert all(r["status"] == "done" for r in after.values())
    assert results_by_key(store) == results_by_key(ref_store)  # the same numbers as without the kill
    assert out == ref_table


def children(pid):
    """The pids of a process's children (Linux: /proc)."""
    found = set()
    for task in os.listdir(f"/proc/{pid}/task"):
        with open(f"/proc/{pid}/task/{task}/children") as f:
            found.update(int(child) for child in f.read().split())
    return found


def alive(pid):
    """Whether a process runs (a zombie has ended)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


@pytest.mark.skipif(not os.path.exists("/proc/self/task"), reason="reads the process tree from /proc")
@pytest.mark.parametrize("how", ["SIGTERM", "SIGKILL"])
def test_a_killed_driver_leaves_no_worker_training(tmp_path, how):
    """`kill` of a sweep's driver alone (not its process group), with 2 worker processes: the workers end too, so
    none trains on with its result lost while the next sweep claims its run again (two processes writing one
    checkpoint). SIGTERM is taken as Ctrl-C: the runs in flight go back to the store as interrupted, exit 130.
    After SIGKILL the workers see that their parent is gone."""
    store = tmp_path / "s.sqlite"
    process = sweep(write_spec(tmp_path), store, "--workers", "2", start_new_session=True)
    try:
        deadline, workers = time.time() + 120, set()
        while time.time() < deadline and not workers:  # both workers up (a run done) and runs in flight
            status = [r["status"] for r in rows(store)] if store.exists() else []
            if status.count("done") >= 1 and status.count("running") == 2:
                workers = children(process.pid)
            time.sleep(0.05)
        assert len(workers) >= 2
        process.send_signal(getattr(signal, how))
        _, err = process.communicate(timeout=60)
        deadline = time.time() + 20
        while time.time() < deadline and any(alive(pid) for pid in workers):
            time.sleep(0.1)
        assert not [pid for pid in workers if alive(pid)]
        if how == "SIGTERM":
            assert process.returncode == 130 and "interrupted" in err
            status = [r["status"] for r in rows(store)]
            assert "running" not in status and status.count("interrupted") >= 1
    finally:
        try:
            os.killpg(process.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


def test_two_drivers_on_one_store_record_every_run_once(tmp_path, reference):
    ref_store, _ = reference
    store = tmp_path / "s.sqlite"
    Store(store)
    spec = write_spec(tmp_path)
    processes = [sweep(spec, store) for _ in range(2)]
    for p in processes:
        finish(p)
    recorded = rows(store)
    assert sorted(r["key"] for r in recorded) == sorted(r["key"] for r in rows(ref_store))
    assert all(r["attempts"] == 1 and r["status"] == "done" for r in recorded)
    assert len({r["pid"] for r in recorded}) == 2  # both drivers did part of the work
    assert results_by_key(store) == results_by_key(ref_store)


def test_local_worker_processes_give_the_same_runs(tmp_path, reference):
    ref_store, ref_table = reference
    store = tmp_path / "s.sqlite"
    out, _ = finish(sweep(write_spec(tmp_path), store, "--workers", "2"))
    assert results_by_key(store) == results_by_key(ref_store) and out == ref_table


def test_ray_backend_runs_a_sweep(tmp_path):
    pytest.importorskip("ray")
    spec = {**SPEC, "seeds": 1, "search": {"evaluate_on": "test"}, "methods": {"si": {"c": 1}, "finetune": {}}}
    store = tmp_path / "ray.sqlite"
    out, err = finish(sweep(write_spec(tmp_path, spec), store, "--backend", "ray", "--address", "local"), timeout=600)
    recorded = rows(store)
    assert len(recorded) == 2 and all(r["status"] == "done" for r in recorded)
    direct = RunConfig.from_dict(recorded[0]["config"])
    assert "si" in out and "finetune" in out and direct.tasks == 3


def test_diverged_run_is_recorded_and_the_sweep_goes_on(tmp_path):
    spec = {**SPEC, "seeds": 1, "search": {"evaluate_on": "test"},
            "methods": {"wild": {"method": "si", "c": 1, "settings": {"lr": 1e30}}, "si": {"c": 1}}}
    out, err = finish(sweep(write_spec(tmp_path, spec), tmp_path / "s.sqlite"))
    by_lr = {r["config"]["lr"]: r for r in rows(tmp_path / "s.sqlite")}
    wild = by_lr[1e30]
    assert wild["status"] == "diverged" and wild["diverged_step"] == 2 and "loss became nan" in wild["error"]
    assert by_lr[0.001]["status"] == "done"
    assert "diverged at step 2" in err
    assert "| wild | (complete, 1 final run(s) diverged) |" in out


def test_failed_run_is_retried_on_the_next_sweep(tmp_path):
    data = tmp_path / "mine.npz"
    spec = {"benchmark": f"arrays:{data}", "settings": {"epochs": 1, "batch_size": 32, "hidden": [16], "split_classes": 2},
            "search": {"evaluate_on": "test"}, "methods": {"si": {"c": 1}}}
    spec_path = write_spec(tmp_path, spec)
    store = tmp_path / "s.sqlite"
    p = subprocess.run([*CLREG, "sweep", str(spec_path), "--store", str(store)], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 2 and "mine.npz: no such file" in p.stderr and not store.exists()  # checked first
    unchecked = [sys.executable, "-c", "from clreg.cli import commands; commands.check_sweep_data = lambda *a: None; "
                 "commands.main()"]  # the data vanishes after the check: the run fails
    p = subprocess.run([*unchecked, "sweep", str(spec_path), "--store", str(store), "--threads", "1"],
                       capture_output=True, text=True, timeout=300)
    assert "1 run(s) failed, so si got no result" in p.stderr  # and the sweep exits 1 (tested in test_rough_edges)
    (row,) = rows(store)
    assert row["status"] == "failed" and "mine.npz" in row["error"] and row["attempts"] == 1
    rng = np.random.default_rng(0)
    np.savez(data, x_train=rng.integers(0, 255, (256, 6), dtype=np.uint8), y_train=np.arange(256) % 4,
             x_test=rng.integers(0, 255, (64, 6), dtype=np.uint8), y_test=np.arange(64) % 4)
    finish(sweep(spec_path, store))
    (row,) = rows(store)
    assert row["status"] == "done" and row["attempts"] == 2  # failed runs are tried again by the next invocation


class Interrupt(Exception):
    pass


class StopsAtTask2(Callback):
    def on_task_start(self, trainer, task, steps):
        if task == 2:
            raise Interrupt


@pytest.mark.parametrize("method,extra", [("si", {"reinit": True}), ("fisher", {"fisher_mode": "sampled"}),
                                          ("sos", {"sos_alpha": 1.0, "penalty": "debiased", "proxy_every": 7})])
def test_resume_from_task_checkpoint_gives_the_identical_matrix(tmp_path, method, extra):
    config = RunConfig(benchmark="permuted-digits", method=method, c=1.0, tasks=4, epochs=2, batch_size=32,
                       hidden=[32], lr=1e-3, **extra)
    bench = load_benchmark(config)
    whole_log = StepLog([JsonLines(tmp_path / "whole.jsonl")])
    whole = Trainer(config, bench, progress=False, log=whole_log).run()
    whole_log.close()
    path = tmp_path / "run.pt"
    with pytest.raises(Interrupt):
        Trainer(config, bench, progress=False, callbacks=[StopsAtTask2()],
                log=StepLog([JsonLines(tmp_path / "resumed.jsonl")])).run(path)
    assert torch.load(path, weights_only=True)["tasks_done"] == 2
    resumed_log = StepLog([JsonLines(tmp_path / "resumed.jsonl")])
    resumed = Trainer(config, bench, progress=False, log=resumed_log)
    matrix = resumed.run(path, resume=True)
    resumed_log.close()
    assert np.array_equal(matrix, whole) and matrix[0, 0] > 0.5
    # the step log is cut back to the checkpoint and continued: the same lines as the uninterrupted run's
    assert (tmp_path / "resumed.jsonl").read_text() == (tmp_path / "whole.jsonl").read_text()
    assert resumed_log.curve() == whole_log.curve()
    other = RunConfig(**{**config.__dict__, "c": 2.0})
    with pytest.raises(CheckpointError, match="belongs to another run configuration .differs in: c."):
        Trainer(other, bench, progress=False).run(path, resume=True)


def test_checkpoints_with_objects_are_refused(tmp_path):
    path = tmp_path / "evil.pt"
    torch.save({"format": 1, "config": {}, "payload": Interrupt()}, path)
    with pytest.raises(CheckpointError, match="cannot be read safely"):
        from clreg.train import checkpoint
        checkpoint.load(path, {})


def test_cli_run_resume(tmp_path):
    base = ["run", "--benchmark", "permuted-digits", "--tasks", "2", "--epochs", "1", "--batch-size", "32",
            "--hidden", "16", "--quiet"]
    p = subprocess.run([*CLREG, *base, "--resume"], capture_output=True, text=True, timeout=120)
    assert p.returncode == 2 and "--resume needs --checkpoint FILE" in p.stderr
    ck = tmp_path / "ck.pt"
    first = subprocess.run([*CLREG, *base, "--checkpoint", str(ck), "--out", str(tmp_path / "a.json")],
                           capture_output=True, text=True, timeout=120)
    assert first.returncode == 0 and ck.exists()
    again = subprocess.run([*CLREG, *base, "--checkpoint", str(ck), "--resume", "--out", str(tmp_path / "b.json")],
                           capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "resuming from" in again.stderr
    a, b = (json.loads((tmp_path / f).read_text()) for f in ("a.json", "b.json"))
    assert a["accuracy_matrix"] == b["accuracy_matrix"]
    wild = subprocess.run([*CLREG, *base, "--lr", "1e30"], capture_output=True, text=True, timeout=120)
    assert wild.returncode == 1 and "clreg: error: diverged: the training loss became nan at step 2 (task 1)" in wild.stderr
    wrong = subprocess.run([*CLREG, *base, "--c", "3", "--checkpoint", str(ck), "--resume"],
                           capture_output=True, text=True, timeout=120)
    assert wrong.returncode == 2 and "belongs to another run configuration (differs in: c)" in wrong.stderr


def test_report_table_and_figures(tmp_path, reference):
    ref_store, _ = reference
    data = write_report(Store(ref_store), tmp_path / "report")
    si = next(r for r in data["rows"] if r["label"] == "si")
    finals = [r for r in rows(ref_store) if r["config"]["method"] == "si" and r["config"]["evaluate_on"] == "test"]
    assert len(finals) == 2 and {r["config"]["c"] for r in finals} == {si["c"]}
    mean, se = mean_and_stderr([r["result"]["average_accuracy"] for r in finals])
    assert si["mean"] == pytest.approx(mean) and si["stderr"] == pytest.approx(se) and si["seeds_done"] == 2
    assert f"| si | {100 * mean:.2f} ± {100 * se:.2f} (2) |" in data["markdown"]
    csv_lines = (tmp_path / "report" / "table.csv").read_text().splitlines()
    assert csv_lines[0].startswith("sweep,benchmark,label,method,c,reinit") and len(csv_lines) == 4
    for name in ("search-grid.png", "matrix-grid-si.png", "matrix-grid-ewc.png", "matrix-grid-finetune.png"):
        from PIL import Image
        with Image.open(tmp_path / "report" / name) as image:
            assert image.size[0] > 300 and image.size[1] > 200
    runs = json.loads((tmp_path / "report" / "runs.json").read_text())
    assert len(runs["runs"]) == len(rows(ref_store)) and "grid" in runs["sweeps"]


def test_cli_sweep_and_report_errors(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("benchmark: permuted-digits\nmethods: {si: {c: -1}}\n")
    p = subprocess.run([*CLREG, "sweep", str(bad)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "methods.si.c must be a number >= 0" in p.stderr and "Traceback" not in p.stderr
    p = subprocess.run([*CLREG, "report", str(tmp_path / "none.sqlite")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "no results store at" in p.stderr
    sqlite3.connect(tmp_path / "empty.sqlite").execute("CREATE TABLE x (y)")
    Store(tmp_path / "empty2.sqlite")
    p = subprocess.run([*CLREG, "report", str(tmp_path / "empty2.sqlite")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 1 and "holds no sweep" in p.stderr


def test_dry_run_creates_nothing_and_missing_ray_says_how_to_install(tmp_path):
    spec = write_spec(tmp_path)
    p = subprocess.run([*CLREG, "sweep", str(spec), "--dry-run"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "holds nothing; 7 run(s) to start now: si c=1 b=32 seed 0" in p.stdout  # finetune's
    # final seeds with its search: it has nothing to choose
    assert not (tmp_path / "grid.sqlite").exists()
    no_ray = [sys.executable, "-c", "import sys; sys.modules['ray'] = None; from clreg.cli.commands import main; main()"]
    p = subprocess.run([*no_ray, "sweep", str(spec), "--backend", "ray"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--backend ray needs Ray, which is not installed: pip install 'clreg[ray]'" in p.stderr
    assert not (tmp_path / "grid.sqlite").exists()


def test_store_import_of_report_and_run_result(tmp_path, reference):
    """A report's runs.json and a `clreg run --out` result, imported into a fresh store, are runs a sweep
    does not start again; importing twice keeps what is there."""
    ref_store, _ = reference
    write_report(Store(ref_store), tmp_path / "report")
    finished = {k: v for k, v in results_by_key(ref_store).items() if v[0] in ("done", "diverged")}
    store = tmp_path / "new.sqlite"
    p = subprocess.run([*CLREG, "store", "import", str(store), str(tmp_path / "report" / "runs.json")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and f"{len(finished)} run(s) added; 0 already in the store (kept)" in p.stdout
    assert "sweep(s) grid" in p.stdout
    assert results_by_key(store) == finished
    p = subprocess.run([*CLREG, "sweep", str(write_spec(tmp_path)), "--store", str(store), "--dry-run"],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "0 run(s) to start now" in p.stdout
    p = subprocess.run([*CLREG, "store", "import", str(store), str(tmp_path / "report" / "runs.json")],
                       capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and f"0 run(s) added; {len(finished)} already in the store (kept)" in p.stdout

    run_args = ["--benchmark", "permuted-digits", "--method", "finetune", "--c", "0", "--tasks", "3", "--epochs", "2",
                "--batch-size", "32", "--hidden", "64", "--lr", "0.001", "--eval", "test", "--quiet"]
    p = subprocess.run([*CLREG, "run", *run_args, "--out", str(tmp_path / "r.json")], capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stderr
    single = tmp_path / "single.sqlite"
    p = subprocess.run([*CLREG, "store", "import", str(single), str(tmp_path / "r.json")], capture_output=True,
                       text=True, timeout=60)
    assert p.returncode == 0 and "1 run(s) added" in p.stdout
    (row,) = rows(single)
    stored = next(r for r in rows(ref_store) if r["config"]["method"] == "finetune" and r["config"]["seed"] == 0
                  and r["config"]["evaluate_on"] == "test")
    assert row["key"] == stored["key"] and row["config"] == stored["config"]
    assert row["versions"]["torch"] == torch.__version__ and "versions" not in row["result"]
    result = json.loads((tmp_path / "r.json").read_text())
    assert row["result"]["accuracy_matrix"] == result["accuracy_matrix"]


def test_every_sweep_run_keeps_its_step_log(reference):
    ref_store, _ = reference
    folder = ref_store.parent / (ref_store.name + ".checkpoints")
    done = [r for r in rows(ref_store) if r["status"] == "done"]
    logs = {p.name for p in folder.glob("*.steps.jsonl")}
    assert logs == {f"{r['key']}.steps.jsonl" for r in done} and not list(folder.glob("*.pt"))
    row = done[0]
    lines = [json.loads(line) for line in (folder / f"{row['key']}.steps.jsonl").read_text().splitlines()]
    evaluations = [line["accuracy"] for line in lines if line.get("event") == "evaluation"]
    assert evaluations == row["result"]["accuracy_matrix"]
    assert max(line["step"] for line in lines) == row["result"]["loss_curve"]["step"][-1]


def test_only_and_seeds_narrow_what_runs_not_what_is_reported(tmp_path, reference):
    """--only runs one method's runs, identical to the whole sweep's; the store keeps the whole spec, so the
    report lists every method. --seeds on a finished store asks for exactly the new seed's final runs."""
    ref_store, _ = reference
    store = tmp_path / "only.sqlite"
    finish(sweep(write_spec(tmp_path), store, "--only", "finetune"))
    ran = results_by_key(store)
    expected = {k: v for k, v in results_by_key(ref_store).items() if
                next(r for r in rows(ref_store) if r["key"] == k)["config"]["method"] == "finetune"}
    assert len(ran) == 3 and ran == expected  # the validation run and two seeds on test
    p = subprocess.run([*CLREG, "report", str(store)], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "| si | searching |" in p.stdout and "| ewc | searching |" in p.stdout
    p = subprocess.run([*CLREG, "sweep", str(write_spec(tmp_path)), "--store", str(ref_store), "--seeds", "3",
                        "--dry-run"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "3 run(s) to start now" in p.stdout, p.stdout
    assert p.stdout.count("seed 2") == 3 and "seed 0" not in p.stdout and "seed 1" not in p.stdout
    p = subprocess.run([*CLREG, "sweep", str(write_spec(tmp_path)), "--store", str(ref_store), "--seeds", "1,",
                        "--only", "si", "--dry-run"], capture_output=True, text=True, timeout=60)
    assert p.returncode == 0 and "1 of 3 methods" in p.stdout, p.stdout  # the search moves to the first seed, 1:
    assert "2 run(s) to start now: si c=1 b=32 seed 1, si c=10 b=32 seed 1" in p.stdout
    for args, message in ((["--only", "sos"], "no method 'sos' in sweep 'grid'; its methods: si, ewc, finetune"),
                          (["--seeds", "two"], "--seeds must be a count (3 means seeds 0, 1, 2)"),
                          (["--seeds", "0,0"], "seeds must be a count >= 1 or a list of distinct integers >= 0")):
        p = subprocess.run([*CLREG, "sweep", str(write_spec(tmp_path)), *args, "--dry-run"], capture_output=True,
                           text=True, timeout=60)
        assert p.returncode == 2 and message in p.stderr, p.stderr
