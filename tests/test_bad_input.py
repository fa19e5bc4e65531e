"""Bad input across every command: each invocation below is invalid, and each must end in exit code 2 with
one line on stderr naming the problem, no traceback, and nothing written that a later run would trust.

The cases are what a careless user or a hostile tester types. Each carries a few words the message must
contain, so a refusal for the wrong reason fails too."""
from __future__ import annotations

import json
import sqlite3

import numpy as np
import pytest

from clreg_cli import invoke_err as invoke

SPEC = """name: tiny
benchmark: permuted-digits
settings: {tasks: 2, epochs: 1, hidden: [8]}
seeds: [0]
methods:
  SI: {method: si, c: 0.1}
"""



@pytest.fixture
def files(tmp_path):
    """Hostile and broken input files, by name."""
    return make_files(tmp_path)


def make_files(t):
    """Write the hostile and broken input files into the folder `t`; returns `t`."""
    (t / "afile").write_text("x")
    (t / "adir").mkdir()
    (t / "latin1.yaml").write_bytes(b"method: si\nc: 0.5 # caf\xe9\n")
    (t / "dup.yaml").write_text("method: si\nc: 0.5\nc: 0.7\n")
    (t / "nan.yaml").write_text("method: si\nc: .nan\n")
    (t / "list.yaml").write_text("- method\n- si\n")
    (t / "unknown.yaml").write_text("method: si\ncolour: blue\n")
    (t / "broken.yaml").write_text("method: [si\n")
    (t / "spec.yaml").write_text(SPEC)
    (t / "spec-latin1.yaml").write_bytes(SPEC.encode().replace(b"tiny", b"t\xefny"))
    (t / "spec-dup.yaml").write_text(SPEC + "seeds: [1]\n")
    (t / "spec-nan.yaml").write_text(SPEC.replace("c: 0.1", "c: .nan"))
    (t / "spec-list.yaml").write_text("- 1\n- 2\n")
    (t / "spec-string.yaml").write_text("just some words\n")
    (t / "spec-nomethods.yaml").write_text(SPEC.split("methods:")[0])
    (t / "garbage.sqlite").write_bytes(b"this is not a database" * 100)
    (t / "empty.pt").write_bytes(b"")
    (t / "garbage.pt").write_bytes(np.random.default_rng(0).bytes(4096))
    (t / "out.json").write_text("{}")
    (t / "not-json.json").write_text("{not json")
    rng = np.random.default_rng(0)
    x = rng.normal(size=(20, 4)).astype(np.float32)
    y = rng.integers(0, 2, 20)
    np.savez(t / "huge-label.npz", x_train=x, y_train=np.where(y == 0, 10 ** 9, 1), x_test=x, y_test=y)
    np.savez(t / "no-features.npz", x_train=x[:, :0], y_train=y, x_test=x[:, :0], y_test=y)
    np.savez(t / "missing-array.npz", x_train=x, y_train=y, x_test=x)
    np.savez(t / "mismatch.npz", x_train=x, y_train=y[:5], x_test=x, y_test=y)
    for name, change in {
            "matrix-text": lambda r: r.update(accuracy_matrix="not a matrix"),
            "matrix-nan": lambda r: r.update(accuracy_matrix=[[float("nan")]]),
            "matrix-null": lambda r: r.update(accuracy_matrix=None),
            "average-text": lambda r: r.update(average_accuracy="high")}.items():
        result = {"accuracy_matrix": [[0.9]], "average_accuracy": 0.9, "mean_forgetting": 0.0}
        change(result)
        (t / f"import-{name}.json").write_text(json.dumps(import_file(result)))
    (t / "import-c-nan.json").write_text(
        json.dumps(import_file(None, c=float("nan"))))
    (t / "import-c-huge.json").write_text(json.dumps(import_file(None)).replace('"c": 0.1', '"c": 1e400'))
    (t / "import-pending.json").write_text(json.dumps(import_file(None)))
    spec_string = import_file(None)
    spec_string["sweeps"] = "a sweep"
    (t / "import-spec-string.json").write_text(json.dumps(spec_string))
    return t


def import_file(result: dict | None, c: float = 0.1) -> dict:
    """A store export holding one run of `tiny` (see SPEC), done with `result` or pending."""
    config = {"benchmark": "permuted-digits", "method": "si", "c": c, "tasks": 1, "epochs": 1, "hidden": [8],
              "seed": 0}
    return {"store": "tiny.sqlite", "sweeps": [],
            "runs": [{"key": "0" * 64, "config": config, "status": "done" if result else "pending",
                      "result": result}]}


CASES = [
    # clreg run: numbers out of range or not finite
    (["run", "--c", "nan"], "--c"),
    (["run", "--c", "inf"], "--c"),
    (["run", "--c", "-1"], "--c"),
    (["run", "--c", "1e400"], "--c"),
    (["run", "--lr", "0"], "--lr"),
    (["run", "--lr", "inf"], "--lr"),
    (["run", "--lr", "nan"], "--lr"),
    (["run", "--lr-gamma", "nan"], "--lr-gamma"),
    (["run", "--prior", "nan"], "--prior"),
    (["run", "--prior", "inf"], "--prior"),
    (["run", "--method", "sos", "--alpha", "nan"], "--alpha"),
    (["run", "--decay", "0"], "--decay"),
    (["run", "--decay", "2"], "--decay"),
    (["run", "--epochs", "0"], "--epochs"),
    (["run", "--batch-size", "0"], "--batch-size"),
    (["run", "--samples", "0"], "--samples"),
    (["run", "--tasks", "0"], "--tasks"),
    (["run", "--hidden", "0"], "--hidden"),
    (["run", "--hidden", "abc"], "--hidden"),
    (["run", "--task-sizes", "0"], "--task-sizes"),
    (["run", "--proxy-every", "-1"], "--proxy-every"),
    (["run", "--log-every", "0"], "--log-every"),
    (["run", "--warn-after", "-1"], "--warn-after"),
    (["run", "--warn-after", "nan"], "--warn-after"),
    (["run", "--nproc", "0"], "--nproc"),
    (["run", "--threads", "0"], "--threads"),
    # clreg run: sizes that cannot fit
    (["run", "--benchmark", "permuted-digits", "--tasks", "1000000"], "tasks"),
    (["run", "--benchmark", "permuted-digits", "--hidden", "99999999999"], "memory"),
    (["run", "--benchmark", "permuted-digits", "--threads", "100000"], "--threads"),
    (["run", "--benchmark", "permuted-digits", "--batch-size", "100000000"], "batch"),
    # clreg run: names that do not exist
    (["run", "--method", "nonexistent"], "nonexistent"),
    (["run", "--benchmark", "nonexistent"], "nonexistent"),
    (["run", "--network", "nonexistent"], "nonexistent"),
    (["run", "--eval", "train"], "--eval"),
    (["run", "--penalty", "foo"], "--penalty"),
    (["run", "--lr-schedule", "nonsense"], "--lr-schedule"),
    (["run", "--foo"], "--foo"),
    # clreg run: files
    (["run", "--config", "{t}/missing.yaml"], "missing.yaml"),
    (["run", "--config", "{t}/latin1.yaml"], "utf-8"),
    (["run", "--config", "{t}/dup.yaml"], "duplicate"),
    (["run", "--config", "{t}/nan.yaml"], "c"),
    (["run", "--config", "{t}/list.yaml"], "list.yaml"),
    (["run", "--config", "{t}/unknown.yaml"], "colour"),
    (["run", "--config", "{t}/broken.yaml"], "broken.yaml"),
    (["run", "--benchmark", "permuted-digits", "--out", "{t}/adir"], "directory"),
    (["run", "--benchmark", "permuted-digits", "--out", "{t}/afile/run.json"], "afile"),
    (["run", "--benchmark", "permuted-digits", "--out", "{t}/out.json"], "--overwrite"),
    (["run", "--benchmark", "permuted-digits", "--checkpoint", "{t}/adir"], "directory"),
    (["run", "--benchmark", "permuted-digits", "--checkpoint", "{t}/garbage.pt"], "--overwrite"),
    (["run", "--benchmark", "permuted-digits", "--resume"], "--checkpoint"),
    (["run", "--benchmark", "permuted-digits", "--checkpoint", "{t}/empty.pt", "--resume"], "empty.pt"),
    (["run", "--benchmark", "permuted-digits", "--checkpoint", "{t}/garbage.pt", "--resume"], "garbage.pt"),
    (["run", "--data-dir", "{t}/nowhere"], "nowhere"),
    (["run", "--benchmark", "arrays:{t}/missing.npz"], "missing.npz"),
    (["run", "--benchmark", "arrays:{t}/huge-label.npz"], "label"),
    (["run", "--benchmark", "arrays:{t}/no-features.npz"], "feature"),
    (["run", "--benchmark", "arrays:{t}/missing-array.npz"], "y_test"),
    (["run", "--benchmark", "arrays:{t}/mismatch.npz"], "y_train"),
    # clreg sweep
    (["sweep", "{t}/missing.yaml"], "missing.yaml"),
    (["sweep", "{t}/spec-latin1.yaml"], "utf-8"),
    (["sweep", "{t}/spec-dup.yaml"], "duplicate"),
    (["sweep", "{t}/spec-nan.yaml"], "c"),
    (["sweep", "{t}/spec-list.yaml"], "spec-list.yaml"),
    (["sweep", "{t}/spec-string.yaml"], "spec-string.yaml"),
    (["sweep", "{t}/spec-nomethods.yaml"], "methods"),
    (["sweep", "{t}/spec.yaml", "--seeds", "1000000"], "--max-runs"),
    (["sweep", "{t}/spec.yaml", "--seeds", "abc"], "--seeds"),
    (["sweep", "{t}/spec.yaml", "--workers", "0"], "--workers"),
    (["sweep", "{t}/spec.yaml", "--stale-after", "nan"], "--stale-after"),
    (["sweep", "{t}/spec.yaml", "--stale-after", "-5"], "--stale-after"),
    (["sweep", "{t}/spec.yaml", "--vectorize", "abc"], "--vectorize"),
    (["sweep", "{t}/spec.yaml", "--store", "{t}/adir"], "directory"),
    (["sweep", "{t}/spec.yaml", "--store", "{t}/garbage.sqlite"], "garbage.sqlite"),
    (["sweep", "{t}/spec.yaml", "--data-dir", "{t}/nowhere"], "nowhere"),
    (["sweep", "{t}/spec.yaml", "--only", "NOPE"], "NOPE"),
    # clreg report
    (["report", "{t}/missing.sqlite"], "missing.sqlite"),
    (["report", "{t}/garbage.sqlite"], "garbage.sqlite"),
    (["report", "{t}/adir"], "adir"),
    # clreg store
    (["store", "import", "{t}/garbage.sqlite", "{t}/import-pending.json"], "garbage.sqlite"),
    (["store", "import", "{t}/s.sqlite", "{t}/import-matrix-text.json"], "accuracy_matrix"),
    (["store", "import", "{t}/s.sqlite", "{t}/import-matrix-nan.json"], "accuracy_matrix"),
    (["store", "import", "{t}/s.sqlite", "{t}/import-matrix-null.json"], "accuracy_matrix"),
    (["store", "import", "{t}/s.sqlite", "{t}/import-average-text.json"], "average_accuracy"),
    (["store", "import", "{t}/s.sqlite", "{t}/import-c-nan.json"], "c"),
    (["store", "import", "{t}/s.sqlite", "{t}/import-c-huge.json"], "c"),
    (["store", "import", "{t}/s.sqlite", "{t}/import-spec-string.json"], "sweeps"),
    (["store", "import", "{t}/s.sqlite", "{t}/not-json.json"], "not-json.json"),
    (["store", "import", "{t}/s.sqlite", "{t}/missing.json"], "missing.json"),
    (["store", "verify", "{t}/missing.sqlite"], "missing.sqlite"),
    (["store", "verify", "{t}/garbage.sqlite"], "garbage.sqlite"),
    # clreg analyze, demo
    (["analyze", "bogus"], "bogus"),
    (["analyze", "noise", "--out-dir", "{t}/afile"], "afile"),
    (["analyze", "measures", "--large-samples", "0"], "--large-samples"),
    (["demo", "--seed", "abc"], "--seed"),
    (["demo", "--threads", "0"], "--threads"),
]


@pytest.mark.parametrize("args, says", CASES, ids=[" ".join(a) for a, _ in CASES])
def test_bad_input_is_one_line_and_exit_2(monkeypatch, capsys, files, args, says):
    code, err = invoke(monkeypatch, capsys, *[a.format(t=files) for a in args])
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 2, err
    assert "Traceback" not in err
    assert len(lines) == 1, err
    assert says.format(t=files).lower() in lines[0].lower(), lines[0]


def test_the_cases_cover_every_command():
    assert len(CASES) >= 60
    commands = {args[0] if args[0] != "store" else " ".join(args[:2]) for args, _ in CASES}
    assert commands >= {"run", "sweep", "report", "store import", "store verify", "analyze", "demo"}


def test_a_refused_import_writes_nothing(monkeypatch, capsys, files):
    code, _ = invoke(monkeypatch, capsys, "store", "import", files / "s.sqlite", files / "import-matrix-nan.json")
    assert code == 2
    if (files / "s.sqlite").exists():
        with sqlite3.connect(files / "s.sqlite") as db:
            tables = [r[0] for r in db.execute("select name from sqlite_master where type = 'table'")]
            assert all(db.execute(f"select count(*) from {t}").fetchone()[0] == 0 for t in tables)
