"""Callbacks and logging: the step log against values recorded independently at every step, the result's
loss curve, run files (--config) and replaying a result, TensorBoard files, --threads."""
import json
import math
import subprocess
import sys

import pytest
import torch
import yaml

from clreg.train.callbacks import Callback
from clreg.train.config import RunConfig, read_run_file
from clreg.train.steplog import JsonLines, StepLog
from clreg.train.loop import Trainer, load_benchmark, run

CLREG = [sys.executable, "-c", "from clreg.cli.commands import main; main()"]
SMALL = dict(benchmark="permuted-digits", tasks=3, epochs=2, hidden=[32], batch_size=64, device="cpu", c=1.0)


class EveryStep(Callback):
    """An independent record: each step's loss, R(θ_t) evaluated before the step, and the lr used."""

    def __init__(self):
        self.rows = []
        self.penalty = None

    def on_before_step(self, trainer, batch):
        with torch.no_grad():
            self.penalty = float(trainer.reg.penalty())

    def on_step(self, trainer, step):
        self.rows.append((step.step, step.task, float(step.loss), self.penalty, step.lr))


@pytest.mark.parametrize("method", ["si", "sos"])
def test_step_log_records_match_every_step(tmp_path, method):
    config = RunConfig(**SMALL, method=method, lr_schedule="cosine", lr_min_factor=0.1, lr=0.01)
    bench = load_benchmark(config)
    witness = EveryStep()
    log = StepLog([JsonLines(tmp_path / "log.jsonl")], every=4)
    trainer = Trainer(config, bench, progress=False, callbacks=[witness], log=log)
    accuracy = trainer.run()
    log.close()
    lines = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    steps = [line for line in lines if "event" not in line]
    evaluations = [line for line in lines if line.get("event") == "evaluation"]
    assert [e["accuracy"] for e in evaluations] == accuracy.tolist()
    per_task = trainer.steps_per_task(0)
    last = 0
    for record in steps:
        window = [row for row in witness.rows if last < row[0] <= record["step"]]
        last = record["step"]
        assert record["loss"] == pytest.approx(sum(r[2] for r in window) / len(window), rel=1e-6)
        step, task, _, penalty, lr = window[-1]
        assert (record["task"], record["task_step"]) == (task, step - task * per_task)
        assert record["penalty"] == pytest.approx(penalty, rel=1e-6, abs=1e-12)
        t = record["task_step"] - 1  # steps taken in the task before this one
        assert record["lr"] == pytest.approx(0.01 * (0.1 + 0.9 * (1 + math.cos(math.pi * t / per_task)) / 2))
        assert record["task_step"] % 4 == 0 or record["task_step"] == per_task
    assert steps[-1]["penalty"] > 0  # task 3 is held by two tasks' penalty
    assert len(steps) == 3 * math.ceil(per_task / 4)


def test_result_loss_curve_is_a_downsampled_log():
    config = RunConfig(**SMALL, method="si")
    log = StepLog(every=1)
    result = run(config, progress=False, log=log)
    curve = result["loss_curve"]
    per_task = len(log.records) // 3
    assert len(log.records) == 3 * per_task and per_task > 20  # every step recorded
    size = math.ceil(per_task / 20)
    for task in range(3):
        rows = log.records[task * per_task:(task + 1) * per_task]
        groups = [rows[i:i + size] for i in range(0, per_task, size)]
        points = [i for i, t in enumerate(curve["task"]) if t == task]
        assert len(points) == len(groups) <= 20
        for i, group in zip(points, groups):
            assert curve["step"][i] == group[-1]["step"] and curve["penalty"][i] == group[-1]["penalty"]
            assert curve["loss"][i] == pytest.approx(sum(r["loss"] for r in group) / len(group))


def test_run_file_and_flags(tmp_path):
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"benchmark": "permuted-digits", "method": "sos", "c": 3, "hidden": [20],
                                    "optimizer": "sgd", "momentum": 0.9}))
    assert read_run_file(path)["method"] == "sos"
    path.write_text("method: si\ncolour: red\n")
    with pytest.raises(ValueError, match="unknown setting.s. 'colour'; allowed: batch_size"):
        read_run_file(path)
    path.write_text("- a list\n")
    with pytest.raises(ValueError, match="must be a mapping of settings"):
        read_run_file(path)
    with pytest.raises(ValueError, match="does not exist"):
        read_run_file(tmp_path / "missing.yaml")


@pytest.mark.slow
def test_cli_config_file_flags_override_and_result_replays(tmp_path):
    spec = tmp_path / "run.yaml"
    spec.write_text(yaml.safe_dump({"benchmark": "permuted-digits", "method": "sos", "c": 3.0, "tasks": 2,
                                    "epochs": 2, "hidden": [24], "optimizer": "sgd", "momentum": 0.9, "lr": 0.05}))
    first = subprocess.run([*CLREG, "run", "--config", str(spec), "--c", "5", "--quiet", "--threads", "1",
                            "--out", str(tmp_path / "a" / "first.json")], capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    a = json.loads((tmp_path / "a" / "first.json").read_text())
    assert a["config"]["c"] == 5.0 and a["config"]["method"] == "sos" and a["config"]["optimizer"] == "sgd"
    assert a["machine"]["torch_threads"] == 1
    steps = (tmp_path / "a" / "first.steps.jsonl").read_text().splitlines()
    assert json.loads(steps[-1])["event"] == "evaluation" and len(steps) > 10
    replay = subprocess.run([*CLREG, "run", "--config", str(tmp_path / "a" / "first.json"), "--quiet",
                             "--out", str(tmp_path / "b.json")], capture_output=True, text=True, timeout=300)
    assert replay.returncode == 0, replay.stderr
    b = json.loads((tmp_path / "b.json").read_text())
    assert b["accuracy_matrix"] == a["accuracy_matrix"] and b["config"] == a["config"]
    bad = subprocess.run([*CLREG, "run", "--config", str(spec), "--momentum", "2"], capture_output=True, text=True,
                         timeout=60)
    assert bad.returncode == 2 and "Invalid value for '--momentum': must be in [0, 1], got 2.0" in bad.stderr


@pytest.mark.slow
def test_tensorboard_event_files(tmp_path):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    p = subprocess.run([*CLREG, "run", "--benchmark", "permuted-digits", "--tasks", "2", "--epochs", "1", "--hidden",
                        "16", "--quiet", "--tensorboard", str(tmp_path / "tb"), "--log-every", "5"],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stderr
    events = EventAccumulator(str(tmp_path / "tb")).Reload()
    assert {"train/loss", "train/penalty", "train/lr", "accuracy/task_1", "accuracy/average"} <= set(events.Tags()["scalars"])
    assert [e.step for e in events.Scalars("accuracy/task_1")] == [1, 2]


def test_tensorboard_missing_is_one_clear_error(tmp_path):
    code = "import sys; sys.modules['torch.utils.tensorboard'] = None; from clreg.cli.commands import main; main()"
    p = subprocess.run([sys.executable, "-c", code, "run", "--benchmark", "permuted-digits", "--tensorboard",
                        str(tmp_path / "tb")], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2 and "--tensorboard needs the tensorboard package: pip install 'clreg[tensorboard]'" in p.stderr
