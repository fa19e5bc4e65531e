"""The per-step log of a run: task loss, penalty and learning rate every few steps, each task's accuracies,
kept for the result's loss curve and written to sinks (a JSON-lines file, TensorBoard event files)."""
from __future__ import annotations

import json
import os
from contextlib import contextmanager
from pathlib import Path

from clreg.core.records import naming
from clreg.train.callbacks import Callback, RunningLoss
from clreg.train.checkpoint import CheckpointError

POINTS_PER_TASK = 200  # step records per task unless `every` is given
CURVE_POINTS_PER_TASK = 20  # points per task in a result's loss curve


def step_log_path(out: str | Path) -> Path:
    """Where `clreg run --out OUT` writes its step log: beside OUT, as OUT-stem.steps.jsonl."""
    out = Path(out)
    return out.with_name(out.stem + ".steps.jsonl")


class JsonLines:
    """Records as JSON lines in `path` (directories created). A fresh run starts the file afresh; a resumed
    one cuts it back to where the checkpoint was taken (refused, CheckpointError, where the file holds less
    than the checkpoint says was written). A failed write (a full disk) raises OSError naming the file; the
    checkpoint taken after a task records the size flushed and synced before it, so it never claims more."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.file = None
        self.resume_at: int | None = None

    def write(self, record: dict) -> None:  # noqa: D102
        with self._naming_path():
            if self.file is None:
                self.file = self._open()
            self.file.write(json.dumps(record) + "\n")

    def _open(self):
        self.path.parent.mkdir(parents=True, exist_ok=True)
        if self.resume_at is None or not self.path.exists():
            return open(self.path, "w")
        file = open(self.path, "r+")
        file.truncate(self.resume_at)
        file.seek(self.resume_at)
        return file

    def flush(self) -> None:  # noqa: D102
        if self.file is not None:
            with self._naming_path():
                self.file.flush()
                os.fsync(self.file.fileno())

    def state_dict(self) -> dict:  # noqa: D102
        self.flush()
        return {"size": self.file.tell() if self.file is not None else 0}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        size = int(state["size"])
        held = self.path.stat().st_size if self.path.exists() else None
        if held is not None and (held < size or (size > 0 and _byte_at(self.path, size - 1) != b"\n")):
            raise CheckpointError(f"the step log {str(self.path)!r} does not hold the {size} bytes of whole lines "
                                  f"the checkpoint was taken after ({held} bytes there): it was cut short or changed",
                                  "delete both to start the run afresh")
        self.resume_at = size

    def close(self) -> None:  # noqa: D102
        if self.file is not None:
            file, self.file = self.file, None
            with self._naming_path():
                file.close()

    @contextmanager
    def _naming_path(self):
        try:
            yield
        except OSError as err:
            raise naming(err, self.path) from err


def _byte_at(path: Path, offset: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        return f.read(1)


class TensorBoard:
    """Records as TensorBoard scalars: train/loss, train/penalty, train/lr by step; accuracy/task_j and
    accuracy/average by tasks trained. Needs the tensorboard package (pip install 'clreg[tensorboard]')."""

    def __init__(self, log_dir: str | Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise ValueError("--tensorboard needs the tensorboard package: pip install 'clreg[tensorboard]' "
                             "(or pip install tensorboard)") from None
        self.writer = SummaryWriter(str(log_dir))

    def write(self, record: dict) -> None:  # noqa: D102
        if "accuracy" in record:
            for j, value in enumerate(record["accuracy"]):
                self.writer.add_scalar(f"accuracy/task_{j + 1}", value, record["task"] + 1)
            self.writer.add_scalar("accuracy/average", record["average_accuracy"], record["task"] + 1)
            return
        for name in ("loss", "penalty", "lr"):
            if record.get(name) is not None:
                self.writer.add_scalar(f"train/{name}", record[name], record["step"])

    def flush(self) -> None:  # noqa: D102
        self.writer.flush()

    def state_dict(self) -> dict:  # noqa: D102
        return {}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        pass

    def close(self) -> None:  # noqa: D102
        self.writer.close()


class StepLog(Callback):
    """Every `every` steps of a task (default: a task's steps / 200) and at its last step: the mean task
    loss over the steps since the previous record, R(θ_t) and the learning rate; after each task, the
    accuracy on every task. Kept in memory (`records`, `curve()`) and passed to `sinks`."""

    def __init__(self, sinks=(), every: int | None = None, points: int = POINTS_PER_TASK):
        if every is not None and every < 1:
            raise ValueError(f"log every must be >= 1 step, got {every}")
        self.sinks, self.fixed_every, self.points = list(sinks), every, points
        self.records: list[dict] = []
        self.evaluations: list[dict] = []
        self.every, self.first, self.steps = 1, 0, 0
        self.loss = RunningLoss()

    def on_task_start(self, trainer, task: int, steps: int) -> None:  # noqa: D102
        self.every = self.fixed_every or max(1, steps // self.points)
        self.first, self.steps = trainer.steps_done, steps
        self.loss = RunningLoss()

    def wants_penalty(self, step: int) -> bool:  # noqa: D102
        task_step = step - self.first
        return task_step % self.every == 0 or task_step == self.steps

    def on_step(self, trainer, step) -> None:  # noqa: D102
        self.loss.add(step.loss)
        if not self.wants_penalty(step.step):
            return
        record = {"step": step.step, "task": step.task, "task_step": step.task_step, "loss": self.loss.pop(),
                  "penalty": None if step.penalty is None else float(step.penalty), "lr": step.lr}
        self.records.append(record)
        for sink in self.sinks:
            sink.write(record)

    def on_evaluation(self, trainer, task: int, accuracy: list[float]) -> None:  # noqa: D102
        record = {"event": "evaluation", "task": task, "step": trainer.steps_done, "accuracy": accuracy,
                  "average_accuracy": sum(accuracy[:task + 1]) / (task + 1)}
        self.evaluations.append(record)
        for sink in self.sinks:
            sink.write(record)
            sink.flush()

    def state_dict(self) -> dict:  # noqa: D102
        return {"records": list(self.records), "evaluations": list(self.evaluations),
                "sinks": [sink.state_dict() for sink in self.sinks]}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        self.records, self.evaluations = list(state["records"]), list(state["evaluations"])
        for sink, sink_state in zip(self.sinks, state["sinks"]):
            sink.load_state_dict(sink_state)

    def close(self) -> None:
        """Close the sinks (files complete on disk)."""
        for sink in self.sinks:
            sink.close()

    def curve(self, points: int = CURVE_POINTS_PER_TASK) -> dict:
        """The loss curve, at most `points` per task: consecutive records averaged (loss) or their last value
        taken (step, penalty, lr); one list per field."""
        out = {"step": [], "task": [], "loss": [], "penalty": [], "lr": []}
        for task in sorted({r["task"] for r in self.records}):
            rows = [r for r in self.records if r["task"] == task]
            size = -(-len(rows) // points)  # ceil: records per point
            for start in range(0, len(rows), size):
                group = rows[start:start + size]
                out["step"].append(group[-1]["step"])
                out["task"].append(task)
                out["loss"].append(sum(r["loss"] for r in group) / len(group))
                out["penalty"].append(group[-1]["penalty"])
                out["lr"].append(group[-1]["lr"])
        return out
