"""Files a run writes and reads back: verified checkpoints, results that are never replaced without
--overwrite, output paths checked before training, a full disk, and `main()`'s one-line failures."""
from __future__ import annotations

import errno
import json
import os
import pickle
import sqlite3
import struct
import sys
import warnings
from collections import OrderedDict

import numpy as np
import pytest
import torch
import yaml

from clreg.cli import commands
from clreg.core import records
from clreg.sweeps import executors
from clreg.train import checkpoint
from clreg.train.checkpoint import CheckpointError, CheckpointWarning
from clreg.train.steplog import JsonLines
from clreg_cli import invoke

TINY = ["--benchmark", "permuted-digits", "--tasks", "2", "--epochs", "1", "--hidden", "8", "--quiet",
        "--threads", "1"]
TINY_CONFIG = {"benchmark": "permuted-digits", "method": "si", "tasks": 2, "epochs": 1, "hidden": [8], "seed": 0}
ENOSPC = OSError(errno.ENOSPC, "No space left on device")



def one_line(err: str) -> str:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in err, err
    return lines[0]


def last_line(err: str) -> str:
    """The failure's line after a run's header: one line, no traceback."""
    lines = [line for line in err.splitlines() if line.strip()]
    assert "Traceback" not in err and lines[0].startswith("clreg run:") and len(lines) == 3, err
    return lines[-1]


def canonical(result_file) -> dict:
    """The canonical config of a result file's run (what its checkpoint is checked against)."""
    from clreg.train.config import RunConfig

    return RunConfig.from_dict(json.loads(result_file.read_text())["config"]).canonical()


def state(config: dict | None = None) -> dict:
    """A checkpoint's kinds of content: tensors of several dtypes and layouts, plain data of every kind."""
    return {"config": config or {"c": 1.0}, "model": OrderedDict(w=torch.randn(4, 3), b=torch.zeros(3)),
            "regularizer": {"penalty": {"omega": [torch.rand(4, 3).t(), torch.ones(0)], "anchor": [torch.randn(2)],
                                        "constant": torch.tensor(0.5, dtype=torch.float64), "strength": None},
                            "task": {"count": torch.tensor(7)}},
            "torch_rng": torch.get_rng_state(), "half": torch.randn(5).to(torch.bfloat16),
            "mask": torch.tensor([True, False]), "accuracy": [[0.5, float("nan")], (1, 2)], "tasks_done": 1,
            "label": "x", "flag": True}


# 1. checkpoints are verified


def test_checksum_survives_save_and_load(tmp_path):
    saved = state()
    checkpoint.save(tmp_path / "c.pt", saved)
    raw = torch.load(tmp_path / "c.pt", weights_only=True)
    assert raw["checksum"] == checkpoint.checksum({"format": checkpoint.FORMAT, **saved})
    assert len(raw["checksum"]) == 64
    loaded = checkpoint.load(tmp_path / "c.pt", {"c": 1.0})
    assert torch.equal(loaded["regularizer"]["penalty"]["omega"][0], saved["regularizer"]["penalty"]["omega"][0])
    changed = state()
    changed["regularizer"]["penalty"]["anchor"][0][1] += 1e-6  # one element, by one part in a million
    assert checkpoint.checksum(changed) != checkpoint.checksum(state())
    assert checkpoint.checksum({"a": 1}) != checkpoint.checksum({"a": 1.0}) != checkpoint.checksum({"a": "1"})


def test_finite_garbage_in_omega_is_refused(tmp_path):
    path = tmp_path / "c.pt"
    omega = torch.rand(64, 32)
    checkpoint.save(path, {**state(), "regularizer": {"penalty": {"omega": [omega]}}})
    data = path.read_bytes()
    at = data.index(omega.numpy().tobytes())  # torch's zip stores tensors uncompressed
    garbage = np.full(omega.numel(), 0.25, np.float32).tobytes()[:8192]
    path.write_bytes(data[:at] + garbage + data[at + len(garbage):])
    tampered = torch.load(path, weights_only=True)["regularizer"]["penalty"]["omega"][0]
    assert torch.isfinite(tampered).all() and not torch.equal(tampered, omega)  # torch.load itself notices nothing
    with pytest.raises(CheckpointError, match="checksum mismatch: the file is corrupted or was modified"):
        checkpoint.load(path, {"c": 1.0})


def test_non_finite_importance_is_refused_though_its_checksum_matches(tmp_path):
    bad = state()
    bad["regularizer"]["penalty"]["omega"][0][2, 1] = float("nan")
    checkpoint.save(tmp_path / "nan.pt", bad)
    with pytest.raises(CheckpointError, match=r"non-finite values \(NaN or infinity\) in regularizer.penalty.omega\[0\]"):
        checkpoint.load(tmp_path / "nan.pt", {"c": 1.0})
    bad = state()
    bad["model"]["b"][0] = float("inf")
    checkpoint.save(tmp_path / "inf.pt", bad)
    with pytest.raises(CheckpointError, match="in model.b"):
        checkpoint.load(tmp_path / "inf.pt", {"c": 1.0})


def test_unreadable_checkpoints_say_why_without_torch_advice(tmp_path):
    (tmp_path / "empty.pt").write_bytes(b"")
    with pytest.raises(CheckpointError, match="'.*empty.pt' is empty"):
        checkpoint.load(tmp_path / "empty.pt", {})
    checkpoint.save(tmp_path / "whole.pt", state())
    data = (tmp_path / "whole.pt").read_bytes()
    (tmp_path / "cut.pt").write_bytes(data[:len(data) // 2])
    with pytest.raises(CheckpointError, match="'.*cut.pt' cannot be read safely: it is truncated or damaged"):
        checkpoint.load(tmp_path / "cut.pt", {})
    torch.save({"format": 1, "payload": OSError("an object")}, tmp_path / "object.pt")
    with pytest.raises(CheckpointError, match="cannot be read safely") as refused:
        checkpoint.load(tmp_path / "object.pt", {})
    assert "weights_only" not in str(refused.value) and "\n" not in str(refused.value)


def test_checkpoints_without_checksum_load_with_a_warning(tmp_path):
    torch.save({"format": 1, **state()}, tmp_path / "old.pt")  # as clreg wrote them before checksums
    with pytest.warns(CheckpointWarning, match="has no checksum"):
        loaded = checkpoint.load(tmp_path / "old.pt", {"c": 1.0})
    assert loaded["tasks_done"] == 1


def test_cli_refuses_to_resume_a_corrupted_checkpoint(tmp_path, monkeypatch, capsys):
    ck = tmp_path / "ck.pt"
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, "--checkpoint", ck)
    assert code == 0, err
    omega = torch.load(ck, weights_only=True)["regularizer"]["penalty"]["omega"][0]
    data = ck.read_bytes()
    at = data.index(omega.numpy().tobytes())
    ck.write_bytes(data[:at] + np.full(omega.numel(), 3.0, np.float32).tobytes() + data[at + 4 * omega.numel():])
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, "--checkpoint", ck, "--resume")
    assert code == 2 and "checksum mismatch: the file is corrupted or was modified" in one_line(err)
    assert str(ck) in err


def test_a_sweep_discards_a_corrupted_checkpoint_and_runs_afresh(tmp_path, capsys):
    from clreg.train.config import RunConfig
    from clreg.train.loop import Trainer, load_benchmark

    config = RunConfig.from_dict(TINY_CONFIG)
    folder = tmp_path / "checkpoints"
    path = folder / f"{config.key()}.pt"
    fresh = executors.execute(TINY_CONFIG, threads=1)["result"]["accuracy_matrix"]
    Trainer(config, load_benchmark(config), progress=False).run(path)
    value = struct.pack(">d", torch.load(path, weights_only=True)["accuracy"][1][0])  # a pickled float, big-endian
    assert value in path.read_bytes()
    path.write_bytes(path.read_bytes().replace(value, struct.pack(">d", 0.999)))  # finite garbage in the results
    capsys.readouterr()
    record = executors.execute(TINY_CONFIG, threads=1, checkpoint_dir=str(folder))
    assert record["status"] == "done", record.get("error")
    assert record["result"]["accuracy_matrix"] == fresh  # trained again, not the garbage resumed
    err = capsys.readouterr().err
    assert f"discarded checkpoint {str(path)!r}: checksum mismatch" in err and "starts from scratch" in err


# 2. results are not replaced without --overwrite; 3. output paths are checked before training


def test_existing_results_and_checkpoints_need_overwrite(tmp_path, monkeypatch, capsys):
    out, ck = tmp_path / "out.json", tmp_path / "ck.pt"
    out.write_text('{"another": "result"}')
    ck.write_bytes(b"another run's checkpoint")
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, "--out", out)
    assert code == 2 and "--out" in one_line(err) and "--overwrite" in err
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, "--checkpoint", ck)
    assert code == 2 and "--checkpoint" in one_line(err) and "--resume" in err and "--overwrite" in err
    assert out.read_text() == '{"another": "result"}' and ck.read_bytes() == b"another run's checkpoint"
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, "--out", out, "--checkpoint", ck, "--overwrite")
    assert code == 0, err
    assert json.loads(out.read_text())["config"]["hidden"] == [8]
    assert checkpoint.load(ck, canonical(out))["tasks_done"] == 2


def test_an_earlier_analysis_needs_overwrite_or_extend(tmp_path, monkeypatch, capsys):
    (tmp_path / "noise.json").write_text('{"earlier": true}')
    code, _, err = invoke(monkeypatch, capsys, "analyze", "noise", *TINY, "--out-dir", tmp_path)
    assert code == 2 and "noise.json" in one_line(err) and "--overwrite" in err and "--extend" in err
    assert (tmp_path / "noise.json").read_text() == '{"earlier": true}'


@pytest.mark.parametrize("args", [["run", *TINY, "--out", "{t}/locked/r.json"],
                                  ["run", *TINY, "--checkpoint", "{t}/locked/c.pt"],
                                  ["run", *TINY, "--tensorboard", "{t}/locked"],
                                  ["analyze", "noise", *TINY, "--out-dir", "{t}/locked"],
                                  ["report", "{t}/s.sqlite", "--out-dir", "{t}/locked"]])
def test_unwritable_outputs_are_refused_before_training(tmp_path, monkeypatch, capsys, args):
    class OneSweep:  # (a store holding a sweep, for the report)
        def sweeps(self):
            return {"tiny": {}}

    monkeypatch.setattr(commands, "open_store", lambda *args, **kwargs: OneSweep())
    (tmp_path / "locked").mkdir()
    real = records.tempfile.TemporaryFile

    def denied(*args, dir=None, **kwargs):  # a read-only directory, even for root
        if str(dir).startswith(str(tmp_path / "locked")):
            raise PermissionError(errno.EACCES, "Permission denied")
        return real(*args, dir=dir, **kwargs)

    monkeypatch.setattr(records.tempfile, "TemporaryFile", denied)
    monkeypatch.setattr(commands, "load_data", lambda config: pytest.fail("trained though the output is unwritable"))
    code, _, err = invoke(monkeypatch, capsys, *[a.format(t=tmp_path) for a in args])
    assert code == 2 and f"'{tmp_path / 'locked'}' is not writable: Permission denied" in one_line(err)


@pytest.mark.parametrize("option", ["--out", "--checkpoint"])
def test_directories_given_as_files_are_refused(tmp_path, monkeypatch, capsys, option):
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, option, tmp_path)
    assert code == 2 and "is a directory" in one_line(err)


# 4. a full disk


def test_a_full_disk_leaves_the_old_file_and_names_the_new(tmp_path, monkeypatch):
    path = tmp_path / "r.json"
    records.write_json(path, {"old": 1})

    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(records.os, "fsync", full)
    with pytest.raises(OSError) as raised:
        records.write_json(path, {"new": 2})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert json.loads(path.read_text()) == {"old": 1} and os.listdir(tmp_path) == ["r.json"]


def test_a_checkpoint_on_a_full_disk_keeps_the_previous(tmp_path, monkeypatch):
    path = tmp_path / "c.pt"
    checkpoint.save(path, state())

    def full(obj, f):
        f.write(b"PK\x03\x04 part of a zip")
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(OSError) as raised:
        checkpoint.save(path, {**state(), "tasks_done": 2})
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == str(path)
    assert checkpoint.load(path, {"c": 1.0})["tasks_done"] == 1 and os.listdir(tmp_path) == ["c.pt"]


def test_a_step_log_on_a_full_disk_names_its_file():
    log = JsonLines("/dev/full")  # every write there fails with ENOSPC
    log.write({"step": 1})
    with pytest.raises(OSError) as raised:
        log.flush()
    assert raised.value.errno == errno.ENOSPC and raised.value.filename == "/dev/full"
    log.file = None  # (its buffer cannot be written either)


def test_a_step_log_shorter_than_its_checkpoint_says_is_refused(tmp_path):
    path = tmp_path / "s.jsonl"
    path.write_text('{"step": 1}\n{"step": 2}\n')
    JsonLines(path).load_state_dict({"size": 12})  # a whole line: fine
    for size in (30, 5):  # more than the file holds; mid-line
        with pytest.raises(CheckpointError, match="cut short or changed"):
            JsonLines(path).load_state_dict({"size": size})


def test_cli_full_disk_at_a_checkpoint_then_resume_gives_the_uninterrupted_run(tmp_path, monkeypatch, capsys):
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, "--out", tmp_path / "whole.json")
    assert code == 0, err
    real, calls = torch.save, []

    def full_at_second(obj, f):
        calls.append(1)
        if len(calls) == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        real(obj, f)

    ck, out = tmp_path / "ck.pt", tmp_path / "cut.json"
    monkeypatch.setattr(torch, "save", full_at_second)
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, "--out", out, "--checkpoint", ck)
    assert code == 1 and last_line(err) == f"clreg: error: no space left on device writing '{ck}'"
    assert not out.exists() and checkpoint.load(ck, canonical(tmp_path / "whole.json"))["tasks_done"] == 1
    monkeypatch.setattr(torch, "save", real)
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, "--out", out, "--checkpoint", ck, "--resume")
    assert code == 0, err
    whole, cut = (json.loads((tmp_path / f).read_text()) for f in ("whole.json", "cut.json"))
    assert cut["accuracy_matrix"] == whole["accuracy_matrix"]
    assert (tmp_path / "cut.steps.jsonl").read_text() == (tmp_path / "whole.steps.jsonl").read_text()


def test_cli_full_disk_at_the_step_log_writes_no_checkpoint(tmp_path, monkeypatch, capsys):
    def full(fd):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(os, "fsync", full)
    out, ck = tmp_path / "r.json", tmp_path / "ck.pt"
    code, _, err = invoke(monkeypatch, capsys, "run", *TINY, "--out", out, "--checkpoint", ck)
    assert code == 1 and last_line(err) == f"clreg: error: no space left on device writing '{tmp_path / 'r.steps.jsonl'}'"
    assert not ck.exists() and not out.exists()


# main(): every failure one line


def _bad_utf8() -> UnicodeDecodeError:
    try:
        b"caf\xe9".decode()
    except UnicodeDecodeError as err:
        return err


def _bad_yaml() -> yaml.YAMLError:
    try:
        yaml.safe_load("method: [si\n")
    except yaml.YAMLError as err:
        return err


def _bad_json() -> json.JSONDecodeError:
    try:
        json.loads("{not json")
    except json.JSONDecodeError as err:
        return err


@pytest.mark.parametrize("error, code, line", [
    (OSError(errno.ENOSPC, "No space left on device", "/data/r.json"), 1,
     "clreg: error: no space left on device writing '/data/r.json'"),
    (OSError(errno.EDQUOT, "Disk quota exceeded", "/data/r.json"), 1,
     "clreg: error: no space left on device (disk quota exceeded) writing '/data/r.json'"),
    (OSError(errno.ENOSPC, "No space left on device"), 1, "clreg: error: no space left on device"),
    (PermissionError(errno.EACCES, "Permission denied", "/ro/r.json"), 2, "clreg: error: '/ro/r.json': Permission denied"),
    (OSError(errno.EROFS, "Read-only file system", "/ro/r.json"), 2, "clreg: error: '/ro/r.json': Read-only file system"),
    (IsADirectoryError(errno.EISDIR, "Is a directory", "/tmp"), 2, "clreg: error: '/tmp': Is a directory"),
    (FileExistsError(errno.EEXIST, "File exists", "/a", None, "/b"), 2, "clreg: error: '/a' -> '/b': File exists"),
    (OSError(errno.EIO, "Input/output error", "/disk/r.json"), 1, "clreg: error: '/disk/r.json': Input/output error"),
    (sqlite3.OperationalError("database or disk is full"), 1,
     "clreg: error: no space left on device for the results store (SQLite: database or disk is full)"),
    (_bad_utf8(), 2, "clreg: error: a file is not UTF-8 text: 'utf-8' codec can't decode byte 0xe9 in position 3"),
    (_bad_yaml(), 2, "clreg: error: invalid YAML: while parsing a flow sequence"),
    (_bad_json(), 2, "clreg: error: invalid JSON: Expecting property name enclosed in double quotes"),
    (RuntimeError("boom\non two lines"), 1, "clreg: internal error: RuntimeError: boom on two lines (run with "
     "CLREG_DEBUG=1 for the traceback; please report it)"),
    (KeyError("x"), 1, "clreg: internal error: KeyError: 'x' (run with CLREG_DEBUG=1"),
    (KeyboardInterrupt(), 130, "interrupted"),
])
def test_main_turns_every_failure_into_one_line(monkeypatch, capsys, error, code, line):
    def fail():
        raise error

    monkeypatch.delenv("CLREG_DEBUG", raising=False)
    monkeypatch.setattr(commands.methods, "callback", fail)
    got, _, err = invoke(monkeypatch, capsys, "methods")
    assert got == code and one_line(err).startswith(line), err


def test_clreg_debug_shows_the_traceback(monkeypatch, capsys):
    def fail():
        raise RuntimeError("boom")

    monkeypatch.setenv("CLREG_DEBUG", "1")
    monkeypatch.setattr(commands.methods, "callback", fail)
    monkeypatch.setattr(sys, "argv", ["clreg", "methods"])
    with pytest.raises(RuntimeError, match="boom"):
        commands.main()


def test_warnings_are_one_line(monkeypatch, capsys):
    def warn():
        warnings.warn("an old checkpoint", CheckpointWarning)

    monkeypatch.setattr(commands.methods, "callback", warn)
    code, _, err = invoke(monkeypatch, capsys, "methods")
    assert code == 0 and one_line(err) == "clreg: warning: an old checkpoint"


def test_pickled_checkpoint_errors_keep_their_message():
    err = pickle.loads(pickle.dumps(CheckpointError("checkpoint 'a' is empty", "delete it")))
    assert str(err) == "checkpoint 'a' is empty; delete it"
