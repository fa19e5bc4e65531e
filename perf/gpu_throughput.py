"""clreg on a GPU: ms per training step against a plain PyTorch loop, the exact Fisher, a full-scale run.

On CUDA, in one process: for widths 400,400 and 2000,2000 (Permuted MNIST, batch 256, 3 tasks × 1 epoch,
so that the penalty is active in tasks 2–3) the plain loop of perf/throughput.py (data on the GPU,
torch's Adam) against clreg finetune, SI, SOS, SIU and EWC, as ms per step and as a ratio to the plain loop
(target ≤ 1.0); the exact Fisher of the 2000,2000 MLP on 1000 samples (target ≤ 0.05 s); and one full-scale
P-MNIST SI run end to end (10 tasks × 20 epochs, 2000,2000, c = 0.2 with re-init; target ≤ 60 s). The JSON
names the GPU.

    python perf/gpu_throughput.py --data-dir DATA --out perf/results/gpu_throughput.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from clreg.benchmarks import permuted_mnist
from clreg.train.config import RunConfig
from clreg.core.device import describe, synchronize
from clreg.importance import TaskSample, create
from clreg.models.build import MLP
from clreg.core.records import machine, versions, write_json
from clreg.train.loop import run
from throughput import BATCH, EPOCHS, METHODS, TASKS, clreg_loop, plain_loop

FULL_SCALE = dict(benchmark="permuted-mnist", method="si", c=0.2, reinit=True, tasks=10, epochs=20, batch_size=256,
                  hidden=[2000, 2000], seed=0)


def step_times(bench, hidden: list[int], repeats: int, precision: str) -> dict:
    """Median ms per step over `repeats` interleaved rounds, plain loop and each method; ratios to plain."""
    steps = TASKS * EPOCHS * (60000 // BATCH)
    plain, methods = [], {m: [] for m in METHODS}
    for _ in range(repeats):
        plain.append(sum(plain_loop(bench, hidden, steps // TASKS, precision)) / steps * 1e3)
        for method in METHODS:
            methods[method].append(sum(clreg_loop(bench, hidden, method, precision)["train"]) / steps * 1e3)
    reference = statistics.median(plain)
    row = {"plain_ms_per_step": reference, "plain_all": plain, "methods": {}}
    for method, values in methods.items():
        ms = statistics.median(values)
        row["methods"][method] = {"ms_per_step": ms, "all": values, "ratio_to_plain": ms / reference}
    return row


def fisher_seconds(bench, samples: int = 1000, repeats: int = 5) -> float:
    """Median seconds of the exact Fisher (all labels) of the 2000,2000 MLP on `samples` inputs."""
    model = MLP(bench.in_features, [2000, 2000], 10).to(bench.device).eval()
    x = bench.train.x[:samples]
    params, times = list(model.parameters()), []
    for _ in range(repeats + 1):  # the first call includes one-time set-up
        synchronize(bench.device)
        start = time.perf_counter()
        create("fisher").task_importance(params, TaskSample(model, x))
        synchronize(bench.device)
        times.append(time.perf_counter() - start)
    return statistics.median(times[1:])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--device", default="cuda")
    parser.add_argument("--widths", default="400,400;2000,2000")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-full-run", action="store_true", help="skip the full-scale P-MNIST run")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if not torch.cuda.is_available():
        sys.exit("gpu_throughput.py needs a CUDA device; perf/throughput.py measures the CPU")
    device = torch.device(args.device)
    bench = permuted_mnist(TASKS, seed=0, data_dir=args.data_dir).to(device)
    record = {"benchmark": "gpu_throughput", "device": describe(device), "steps": {}, "machine": machine(),
              "versions": versions(), "command": " ".join(["python", *sys.argv])}
    for widths in args.widths.split(";"):
        for precision in args.precisions.split(","):
            key = f"{widths} {precision}"
            row = record["steps"][key] = step_times(bench, [int(w) for w in widths.split(",")], args.repeats,
                                                   precision)
            print(f"{key}: plain {row['plain_ms_per_step']:.2f} ms/step; " + ", ".join(
                f"{m} {e['ms_per_step']:.2f} ms ({e['ratio_to_plain']:.2f}x)" for m, e in row["methods"].items()),
                flush=True)
    record["fisher_1000_seconds"] = fisher_seconds(bench)
    print(f"exact Fisher, 2000,2000 MLP, 1000 samples: {record['fisher_1000_seconds']:.4f} s", flush=True)
    if not args.no_full_run:
        start = time.perf_counter()
        result = run(RunConfig(**FULL_SCALE, data_dir=args.data_dir, device=args.device), progress=False)
        record["full_scale_si"] = {"config": FULL_SCALE, "wall_seconds": time.perf_counter() - start,
                                   "average_accuracy": result["average_accuracy"], "timing": result["timing"]}
        print(f"full-scale P-MNIST SI: {record['full_scale_si']['wall_seconds']:.1f} s end to end, "
              f"{100 * result['average_accuracy']:.2f}%", flush=True)
    if args.out:
        write_json(args.out, record)


if __name__ == "__main__":
    main()
