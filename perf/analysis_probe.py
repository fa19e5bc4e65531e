"""The analyses' per-step cost at full scale: plain SI training against training with the measures and bias
probes attached, g_t read from the training pass (the default where that pass is g_t) or taken in a pass of
the probe's own (the route for active dropout or bf16), same run.

Permuted MNIST, 2000,2000, batch 256, SI c = 0.2 with re-init, as `experiments/analyses.py --full`. Each mode
trains the first task for `--steps` steps (the probes' full-gradient checkpoint at step 0 is left out of the
timing: it comes every 470 steps in the real run); the modes alternate over `--repeats` rounds and the median
time per step is kept.

    python perf/analysis_probe.py --data-dir ../shared/datasets --out perf/results/analysis_probe.json
"""
from __future__ import annotations

import argparse
import json
import statistics
import time

from clreg.analysis.bias import BiasProbe
from clreg.analysis.measures import MeasuresProbe
from clreg.analysis.probe import Probes
from clreg.train.callbacks import Callback
from clreg.train.config import RunConfig
from clreg.core.records import machine, versions, write_json
from clreg.train.loop import Trainer, load_benchmark

MODES = ("plain", "probes, g_t from the training pass", "probes, g_t in a pass of their own")


class StepClock(Callback):
    """Times steps `skip`..`steps` of the first task, then ends it."""

    def __init__(self, steps: int, skip: int):
        self.steps, self.skip, self.times = steps, skip, []

    def on_step(self, trainer, step) -> None:  # noqa: D102
        self.times.append(time.perf_counter())
        trainer.stop_task = step.task_step >= self.steps

    def seconds_per_step(self) -> float:
        times = self.times[self.skip:]
        return (times[-1] - times[0]) / (len(times) - 1)


def one(mode: str, config: RunConfig, bench, steps: int) -> float:
    clock = StepClock(steps, skip=3)
    callbacks = [clock]
    if mode != "plain":
        probes = Probes([MeasuresProbe(config.damping, config.samples), BiasProbe(470)])
        callbacks.insert(0, probes)
    trainer = Trainer(config, bench, progress=False, callbacks=callbacks)
    if mode == MODES[2]:
        probes.reuse = False
    trainer.fit_task(0)
    return clock.seconds_per_step()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--steps", type=int, default=40)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    config = RunConfig(benchmark="permuted-mnist", tasks=1, hidden=[2000, 2000], epochs=1, method="si", c=0.2,
                       reinit=True, data_dir=args.data_dir)
    bench = load_benchmark(config)
    seconds = {mode: [] for mode in MODES}
    for _ in range(args.repeats):
        for mode in MODES:
            seconds[mode].append(one(mode, config, bench, args.steps))
    median = {mode: statistics.median(v) for mode, v in seconds.items()}
    result = {"ms_per_step": {mode: 1e3 * s for mode, s in median.items()},
              "relative_to_plain": {mode: s / median["plain"] for mode, s in median.items()},
              "own_pass_over_training_pass": median[MODES[2]] / median[MODES[1]],
              "all_seconds_per_step": seconds, "steps": args.steps, "repeats": args.repeats,
              "machine": machine(), "versions": versions()}
    print(json.dumps({k: result[k] for k in ("ms_per_step", "relative_to_plain", "own_pass_over_training_pass")},
                     indent=1))
    if args.out:
        write_json(args.out, result)


if __name__ == "__main__":
    main()
