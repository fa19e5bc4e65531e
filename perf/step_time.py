"""Per-step training time of whichever clreg is on sys.path: P-MNIST (2 tasks x 1 epoch, the given width and
method), every step of task 2 (penalty active) timed by a callback from on_before_step to on_step (forward,
backward, the regularised step); prints one JSON line (min, 20th percentile, median ms). It uses only import
paths that every version since 0.1 has, so it compares two trees in one sitting, alternated, e.g. a git
worktree of the commit before a change against this one:

    for round in 1 2; do for tree in ../before/src src; do
        PYTHONPATH=$tree python perf/step_time.py si 2000 --data-dir ../shared/datasets; done; done

perf/results/step_time_refactor.json holds the runs before and after issue 29's restructuring.
"""
import json
import sys
import time
import warnings

import torch

import clreg
warnings.simplefilter("ignore", DeprecationWarning)  # the old paths, used on purpose
from clreg.callbacks import Callback  # noqa: E402
from clreg.train import Trainer  # noqa: E402

try:
    from clreg.train.config import RunConfig
except ImportError:
    from clreg.config import RunConfig
torch.set_num_threads(2)
method, width = sys.argv[1], int(sys.argv[2])
data_dir = sys.argv[sys.argv.index("--data-dir") + 1] if "--data-dir" in sys.argv else "../shared/datasets"

class Timer(Callback):
    def __init__(self):
        self.times, self.start = [], None
    def on_before_step(self, trainer, batch):
        self.start = time.perf_counter()
    def on_step(self, trainer, step):
        if step.task == 1:
            self.times.append(time.perf_counter() - self.start)

from clreg.train import load_benchmark  # noqa: E402

config = RunConfig(benchmark="permuted-mnist", method=method, tasks=2, epochs=1, hidden=[width, width], device="cpu",
                   data_dir=data_dir, seed=0)
timer = Timer()
trainer = Trainer(config, load_benchmark(config), progress=False, callbacks=[timer])
trainer.run()
t = sorted(timer.times)
print(json.dumps({"tree": clreg.__file__, "method": method, "width": width, "steps": len(t), "min_ms": 1e3 * t[0],
                  "p20_ms": 1e3 * t[len(t) // 5], "median_ms": 1e3 * t[len(t) // 2]}))
