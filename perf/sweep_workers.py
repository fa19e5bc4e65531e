"""Wall time of one small sweep with W workers × T threads, for several (W, T) splits of this machine's
cores, in one process (same machine state); each measured into a fresh store, modes interleaved over
rounds, the median reported. Ratios are against the first mode (one run at a time with every core).

    python perf/sweep_workers.py --data-dir ../shared/datasets --out perf/results/sweep_workers.json
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

from clreg.sweeps.executors import InlineExecutor, ProcessExecutor
from clreg.core.records import machine, versions, write_json
from clreg.sweeps.store import Store
from clreg.sweeps.plan import SweepDriver
from clreg.sweeps.spec import parse_spec


def spec(args) -> dict:
    """`args.runs` independent runs: SI with `args.runs` values of c, one seed, searched on test without
    extension (the chosen c's final run is its search run), so all runs can start at once."""
    return {"name": "workers", "benchmark": args.benchmark, "seeds": 1,
            "settings": {"tasks": args.tasks, "epochs": args.epochs, "hidden": [args.width, args.width],
                         "data_dir": args.data_dir},
            "search": {"evaluate_on": "test", "extend": False},
            "methods": {"si": {"c": [float(2 ** i) for i in range(args.runs)]}}}


def measure(args, workers: int, threads: int) -> float:
    """Seconds for the whole sweep, executor start-up included."""
    with tempfile.TemporaryDirectory() as tmp:
        sweep = parse_spec(spec(args))
        store = Store(Path(tmp) / "store.sqlite")
        start = time.perf_counter()
        executor = (InlineExecutor(threads, sweep.runtime) if workers == 1
                    else ProcessExecutor(workers, threads, sweep.runtime))
        SweepDriver(sweep, store, executor, log=lambda line: None).run()
        executor.shutdown()
        seconds = time.perf_counter() - start
        assert store.counts() == {"done": args.runs}, store.counts()
        return seconds


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--benchmark", default="permuted-mnist")
    parser.add_argument("--runs", type=int, default=4)
    parser.add_argument("--tasks", type=int, default=2)
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--width", type=int, default=400)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    cores = os.cpu_count() or 1
    modes = [(1, cores), (cores, 1)] + ([(cores // 2, 2)] if cores >= 4 else [])
    times = {mode: [] for mode in modes}
    for _ in range(args.rounds):
        for workers, threads in modes:
            times[(workers, threads)].append(measure(args, workers, threads))
    reference = statistics.median(times[modes[0]])
    rows = [{"workers": w, "threads_per_worker": t, "seconds": statistics.median(times[(w, t)]),
             "all_seconds": times[(w, t)], "speedup_vs_one_run_all_cores": reference / statistics.median(times[(w, t)])}
            for w, t in modes]
    for row in rows:
        print(f"{row['workers']} worker(s) x {row['threads_per_worker']} thread(s): {row['seconds']:.1f} s "
              f"({row['speedup_vs_one_run_all_cores']:.2f}x)")
    if args.out:
        write_json(args.out, {"sweep": spec(args), "rows": rows, "rounds": args.rounds, "machine": machine(),
                              "versions": versions(), "command": " ".join([sys.executable, *sys.argv])})


if __name__ == "__main__":
    main()
