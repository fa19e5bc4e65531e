"""Training runs: the continual loop (`loop`), its settings (`config`), optimisers and schedules (`optim`),
checkpoints, metrics, the callback API and the built-in callbacks (progress, step log, proxy losses, plateau,
task search), and the data-parallel run (`nproc`).

`from clreg.train import run, Trainer, ...` keeps working: those names are the loop's, loaded at first use."""
from importlib import import_module

_NAMES = {**dict.fromkeys(("TaskPlan", "Trainer", "check_fits", "index_stream", "load_benchmark", "result_of", "run",
                            "steps_per_epoch", "task_loss"), "clreg.train.loop"),
          "Diverged": "clreg.train.guard", "DivergenceGuard": "clreg.train.guard", "evaluate": "clreg.train.evaluation"}


def __getattr__(name: str):
    if name in _NAMES:
        return getattr(import_module(_NAMES[name]), name)
    raise AttributeError(f"module 'clreg.train' has no attribute {name!r}")
