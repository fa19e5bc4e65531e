"""The CIFAR network (docs/algorithms.md §6) on split-cifar10: seconds per 10,000 training images and post-task importance
time at n = 500, each against a reference measured in the same run.

Training: one task of split-cifar10 (one epoch = 35 steps of 256 = 8,960 images) with (a) a plain PyTorch loop
as a user would write it (the same layers in nn.Sequential, default memory format, torch Adam), (b) clreg
finetune, SI (dropout: one extra forward/backward with dropout off per step) and EWC. Importance: exact
Fisher and MAS on 500 training images by clreg's engine against the naive loop (one backward per sample and
label) on 25 images, scaled ×20. From the per-10k figure, the time of the paper's full split-cifar10-100
protocol (60 epochs of 45,000 + 5 × 4,500 images) is extrapolated.

    python perf/cifar_speed.py --data-dir ../shared/datasets --out perf/results/cifar_speed.json
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F
from torch import nn

from clreg import importance
from clreg.benchmarks import split_cifar10
from clreg.train.config import RunConfig
from clreg.importance import TaskSample
from clreg.models.build import task_forward
from clreg.core.records import machine, versions, write_json
from clreg.train.loop import Trainer

PAPER_IMAGES_PER_EPOCH = 45000 + 5 * 4500  # split-cifar10-100: CIFAR-10's 90% then five CIFAR-100 tenths
PAPER_EPOCHS = 60


def plain_network() -> nn.Module:
    return nn.Sequential(nn.Conv2d(3, 32, 3, padding=1), nn.ReLU(), nn.Conv2d(32, 32, 3, padding=1), nn.ReLU(),
                         nn.MaxPool2d(2), nn.Dropout(0.25), nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(),
                         nn.Conv2d(64, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2), nn.Dropout(0.25), nn.Flatten(),
                         nn.Linear(4096, 512), nn.ReLU(), nn.Dropout(0.5), nn.Linear(512, 2))


def plain_epoch(bench) -> float:
    """Seconds per 10k images of a plain loop over one epoch of task 1."""
    torch.manual_seed(0)
    model, data = plain_network(), bench.tasks[0].train
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    order, steps = torch.randperm(len(data)), len(data) // 256
    start = time.perf_counter()
    for step in range(steps):
        index = order[step * 256:(step + 1) * 256]
        optimizer.zero_grad()
        F.cross_entropy(model(data.x[index]), data.y[index]).backward()
        optimizer.step()
    return 1e4 * (time.perf_counter() - start) / (steps * 256)


def clreg_epoch(bench, method: str) -> float:
    """Seconds per 10k images of clreg's loop over one epoch of task 1 (importance excluded)."""
    trainer = Trainer(RunConfig(benchmark="split-cifar10", method=method, c=1.0, tasks=1, epochs=1), bench,
                      progress=False)
    trainer.train_task(0)
    return 1e4 * trainer.timing["train_seconds"] / (trainer.steps_per_task(0) * 256)


def importance_seconds(bench, method: str, n: int, naive: bool) -> float:
    trainer = Trainer(RunConfig(benchmark="split-cifar10", method=method, tasks=1, epochs=1), bench, progress=False)
    model, reg = trainer.model.eval(), trainer.reg
    x = bench.tasks[0].train.x[:n]
    forward = task_forward(model, 0)
    start = time.perf_counter()
    if naive:
        for i in range(n):
            z = forward(x[i:i + 1])[0]
            q = z.softmax(0)
            terms = [-F.log_softmax(z, 0)[y] for y in range(len(z))] if method == "fisher" else [q.square().sum()]
            for k, objective in enumerate(terms):
                torch.autograd.grad(objective, reg.params, retain_graph=k < len(terms) - 1)
    else:
        importance.create(method).task_importance(reg.params, TaskSample(model, x, forward=forward))
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    bench = split_cifar10(1, "test", args.data_dir)
    ways = {"plain": lambda: plain_epoch(bench), **{m: (lambda m=m: clreg_epoch(bench, m)) for m in
                                                     ("finetune", "si", "ewc")}}
    samples = {w: [] for w in ways}
    for _ in range(args.repeats):  # interleaved rounds: drifts of the machine hit every way alike
        for way, measure in ways.items():
            samples[way].append(measure())
    train = {w: statistics.median(v) for w, v in samples.items()}
    record = {"seconds_per_10k_images": train, "rounds": samples,
              "ratio_to_plain": {w: v / train["plain"] for w, v in train.items()},
              "paper_protocol_hours_per_run": {w: v * PAPER_EPOCHS * PAPER_IMAGES_PER_EPOCH / 1e4 / 3600
                                               for w, v in train.items()},
              "importance_seconds_500": {}}
    for method in ("fisher", "mas"):
        ours = min(importance_seconds(bench, method, 500, False) for _ in range(2))
        naive = importance_seconds(bench, method, 25, True) * 20
        record["importance_seconds_500"][method] = {"clreg": ours, "naive_loop_scaled": naive, "speedup": naive / ours}
    record.update(machine=machine(), versions=versions(), command=" ".join([sys.executable, *sys.argv]),
                  threads=torch.get_num_threads())
    for way, value in train.items():
        print(f"{way:<9} {value:6.2f} s / 10k images  ({value / train['plain']:.2f}x plain)  paper protocol "
              f"{record['paper_protocol_hours_per_run'][way]:.1f} h per run")
    for method, row in record["importance_seconds_500"].items():
        print(f"{method:<9} n=500: clreg {row['clreg']:.2f} s, naive loop {row['naive_loop_scaled']:.1f} s "
              f"({row['speedup']:.0f}x)")
    if args.out:
        write_json(args.out, record)


if __name__ == "__main__":
    main()
