"""How large each Fisher estimator and the Squisher are against the exact Fisher, on one model: the sweep's first
task (Permuted MNIST, widths 200,200, 1 epoch, batch 256, seed 0) trained once, then every estimator measured on
the same 2048 importance samples the Trainer would draw. The ratio Σω / Σω_exact is the factor by which an
estimator's c must shrink to give the same penalty (docs/algorithms.md §3, "Fisher estimators").

    python experiments/results/fisher-estimators/scale.py --data-dir ../shared/datasets
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from clreg import importance
from clreg.benchmarks import derive_seed
from clreg.core.records import machine, versions
from clreg.importance import TaskSample
from clreg.models.build import task_forward
from clreg.train.config import RunConfig
from clreg.train.loop import Trainer, load_benchmark

ESTIMATORS = {"exact": {}, "sampled k=1": {"mode": "sampled"}, "sampled k=10": {"mode": "sampled", "draws": 10},
              "empirical": {"mode": "empirical"}, "batched b=32": {"mode": "batched", "batch": 32},
              "batched b=256": {"mode": "batched", "batch": 256}}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--out", default=str(Path(__file__).parent / "scale.json"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    config = RunConfig(benchmark="permuted-mnist", method="squisher", c=0.0, tasks=1, hidden=[200, 200], epochs=1,
                       batch_size=256, importance_samples=2048, seed=0, data_dir=args.data_dir, reinit=False)
    trainer = Trainer(config, load_benchmark(config), progress=False)
    trainer.fit_task(0)
    bench, params = trainer.bench, trainer.reg.params
    index = torch.randperm(bench.train_size(0), generator=torch.Generator().manual_seed(derive_seed(0, 5, 0)))[:2048]
    x, y = bench.batch(0, index)
    sample = TaskSample(trainer.model, x, y, task_forward(trainer.model, 0))
    totals = {name: sum(float(o.sum()) for o in importance.create("fisher", **options).task_importance(params, sample))
              for name, options in ESTIMATORS.items()}
    squisher = importance.create("squisher")
    squisher.optimizer = trainer.optimizer
    totals["squisher"] = sum(float(o.sum()) for o in squisher.task_importance(params, None))
    result = {"config": config.to_dict(), "sum_omega": totals,
              "ratio_to_exact": {name: total / totals["exact"] for name, total in totals.items()},
              "machine": machine(), "versions": versions()}
    Path(args.out).write_text(json.dumps(result, indent=1) + "\n")
    for name, ratio in result["ratio_to_exact"].items():
        print(f"{name:>14}: sum omega {totals[name]:.4g}, {ratio:.3g} x exact")


if __name__ == "__main__":
    main()
