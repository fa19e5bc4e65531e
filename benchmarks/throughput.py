"""Training throughput of clreg against a plain PyTorch loop, measured in the same run.

Permuted MNIST, 3 tasks × 1 epoch (⌊60000/256⌋ = 234 steps each), batch 256, at widths 400,400 and
2000,2000. The plain loop (written below: data in memory, Adam, no penalty) is the reference; each
clreg method's training time is quoted as a ratio to it. Variants are interleaved over `--repeats`
rounds and the median time is used, because the machine is noisy. EWC's post-task Fisher (1000
samples) is quoted as a fraction of one task's training time (median over tasks 2–3; the
first Fisher of a process includes one-time kernel set-up and is quoted separately).

    python benchmarks/throughput.py --data-dir ../shared/datasets --out benchmarks/results/throughput.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from clreg.benchmarks import permuted_mnist
from clreg.config import RunConfig
from clreg.models import MLP
from clreg.results import machine, versions, write_json
from clreg.train import Trainer

METHODS = {"finetune": {}, "si": {}, "sos": {}, "siu": {}, "ewc": {}}
TASKS, EPOCHS, BATCH = 3, 1, 256


def plain_loop(bench, hidden: list[int], steps: int) -> float:
    """What a user would write without clreg: shuffled batches, Adam, cross-entropy. Returns seconds."""
    torch.manual_seed(0)
    model = MLP(bench.in_features, hidden, 10)
    x_all, y_all = bench.train.x, bench.train.y
    elapsed = 0.0
    for task in range(TASKS):
        perm = bench.permutations[task]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        order = torch.randperm(len(y_all))
        start = time.perf_counter()
        for step in range(steps):
            index = order[(step * BATCH) % (len(order) - BATCH):][:BATCH]
            x, y = x_all[index][:, perm], y_all[index]
            optimizer.zero_grad()
            F.cross_entropy(model(x), y).backward()
            optimizer.step()
        elapsed += time.perf_counter() - start
    return elapsed


def clreg_loop(bench, hidden: list[int], method: str) -> dict:
    """clreg's trainer on the same benchmark; training and importance seconds."""
    config = RunConfig(method=method, c=1.0, tasks=TASKS, epochs=EPOCHS, batch_size=BATCH, hidden=hidden)
    trainer = Trainer(config, bench, progress=False)
    per_task = []
    for task in range(TASKS):
        before = trainer.timing["importance_seconds"]
        trainer.train_task(task)
        per_task.append(trainer.timing["importance_seconds"] - before)
    return {**trainer.timing, "importance_per_task": per_task}


def measure(bench, hidden: list[int], repeats: int) -> dict:
    steps = EPOCHS * (60000 // BATCH)
    plain, runs = [], {m: [] for m in METHODS}
    for _ in range(repeats):
        plain.append(plain_loop(bench, hidden, steps))
        for method in METHODS:
            runs[method].append(clreg_loop(bench, hidden, method))
    plain_s = statistics.median(plain)
    row = {"plain_seconds": plain_s, "plain_all": plain, "methods": {}}
    for method, timings in runs.items():
        train = statistics.median(t["train_seconds"] for t in timings)
        entry = {"train_seconds": train, "ratio_to_plain": train / plain_s,
                 "train_all": [t["train_seconds"] for t in timings]}
        if method == "ewc":  # the first Fisher of a process includes one-time kernel set-up: quoted apart
            per_task = [t["importance_per_task"] for t in timings]
            later = statistics.median(x for tasks in per_task for x in tasks[1:])
            entry["importance_seconds_per_task"] = later
            entry["importance_first_task_seconds"] = statistics.median(tasks[0] for tasks in per_task)
            entry["importance_fraction_of_task"] = later / (train / TASKS)
        row["methods"][method] = entry
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description="clreg training throughput vs a plain PyTorch loop")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--widths", default="400,400;2000,2000")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bench = permuted_mnist(TASKS, seed=0, data_dir=args.data_dir)
    results = {}
    for widths in args.widths.split(";"):
        hidden = [int(w) for w in widths.split(",")]
        row = measure(bench, hidden, args.repeats)
        results[widths] = row
        print(f"widths {widths}: plain loop {row['plain_seconds']:.2f}s for {TASKS} tasks", flush=True)
        for method, entry in row["methods"].items():
            extra = ""
            if "importance_fraction_of_task" in entry:
                extra = (f"  Fisher {entry['importance_seconds_per_task']:.2f}s/task = "
                         f"{100 * entry['importance_fraction_of_task']:.1f}% of a task's training "
                         f"(first task, with set-up: {entry['importance_first_task_seconds']:.2f}s)")
            print(f"  {method:<9} {entry['train_seconds']:7.2f}s  {entry['ratio_to_plain']:.3f}x plain{extra}", flush=True)
    record = {"benchmark": "throughput", "tasks": TASKS, "epochs": EPOCHS, "batch_size": BATCH,
              "repeats": args.repeats, "results": results, "machine": machine(), "versions": versions(),
              "command": " ".join(["python", *sys.argv])}
    if args.out:
        write_json(args.out, record)


if __name__ == "__main__":
    main()
