"""Training throughput of clreg against a plain PyTorch loop and against the machine's matmul peak.

Permuted MNIST at full width (784-2000-2000-10, batch 256; also 400,400), 3 tasks × 1 epoch
(⌊60000/256⌋ = 234 steps each), so that the penalty is active in tasks 2 and 3, in fp32 and in bf16
autocast (`--precisions`; the bf16 rows' peak is bf16 matmuls, their plain loop uses autocast too).
Reported per variant:
training seconds (median over `--repeats` interleaved rounds: the machine is noisy), the ratio to
clreg finetune, and the fraction of the matmul peak, i.e. (the step's matmul FLOPs × steps / time) /
peak, where the peak is measured in the same run by timing `torch.matmul` on exactly the step's
shapes (forward, weight gradients, input gradients). The plain loop is what a user writes without
clreg (default Adam, index-and-permute batches). EWC's post-task Fisher (1000 samples) is quoted as
a share of one task's training time (tasks 2–3; the first includes one-time set-up).

    python perf/throughput.py --data-dir ../shared/datasets --widths "2000,2000:fp32;400,400:fp32,bf16" \
        --repeats 2 --out perf/results/throughput.json

(bf16 at 2000,2000 is left out on a CPU without native bf16 matmuls: it would take hours there.)
`--methods si,sos,ewc` measures those only (finetune, the reference, always runs). Where a width runs in
fp32 and bf16, each bf16 variant also gets its speed-up over fp32 (fp32 seconds / bf16 seconds, same run):

    python perf/throughput.py --data-dir ../shared/datasets --widths "2000,2000:fp32,bf16" --methods si,sos,ewc \
        --repeats 2 --out perf/results/throughput_bf16_full.json

The functions take a device, and perf/gpu_throughput.py runs them on CUDA.
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch
import torch.nn.functional as F

from clreg.benchmarks import permuted_mnist
from clreg.train.config import RunConfig
from clreg.core.device import autocast, synchronize
from clreg.models.build import MLP
from clreg.core.records import machine, versions, write_json
from clreg.train.loop import Trainer

METHODS = ["finetune", "si", "sos", "siu", "ewc"]
TASKS, EPOCHS, BATCH = 3, 1, 256


def matmul_shapes(widths: list[int], batch: int) -> list[tuple[int, int, int]]:
    """(m, k, n) of every matrix product in one training step of the MLP (no input gradient for layer 1)."""
    dims = [784, *widths, 10]
    shapes = []
    for i, (fan_in, fan_out) in enumerate(zip(dims[:-1], dims[1:])):
        shapes.append((batch, fan_in, fan_out))  # forward
        shapes.append((fan_out, batch, fan_in))  # weight gradient
        if i > 0:
            shapes.append((batch, fan_out, fan_in))  # gradient of the layer's input
    return shapes


def step_flops(shapes) -> float:
    return sum(2.0 * m * k * n for m, k, n in shapes)


def matmul_peak(shapes, seconds: float = 3.0, precision: str = "fp32", device: str = "cpu") -> float:
    """FLOP/s of torch.matmul on the step's shapes, back to back (best of repeated rounds), in float32 or
    (precision bf16) bfloat16."""
    dtype = torch.bfloat16 if precision == "bf16" else torch.float32
    operands = [(torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device),
                 torch.empty(m, n, dtype=dtype, device=device)) for m, k, n in shapes]
    flops, best, deadline = step_flops(shapes), 0.0, time.perf_counter() + seconds
    while time.perf_counter() < deadline:
        synchronize(torch.device(device))
        start = time.perf_counter()
        for a, b, out in operands:
            torch.matmul(a, b, out=out)
        synchronize(torch.device(device))
        best = max(best, flops / (time.perf_counter() - start))
    return best


def plain_loop(bench, hidden: list[int], steps: int, precision: str = "fp32") -> list[float]:
    """What a user writes without clreg: shuffled batches, Adam, cross-entropy (bf16: under autocast), on the
    benchmark's device. Seconds per task."""
    torch.manual_seed(0)
    device = bench.device
    model = MLP(bench.in_features, hidden, 10).to(device)
    x_all, y_all = bench.train.x, bench.train.y
    seconds = []
    for task in range(TASKS):
        perm = bench.permutations[task]
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
        order = torch.randperm(len(y_all), device=device)
        synchronize(device)
        start = time.perf_counter()
        for step in range(steps):
            index = order[(step * BATCH) % (len(order) - BATCH):][:BATCH]
            x, y = x_all[index][:, perm], y_all[index]
            optimizer.zero_grad()
            with autocast(device, precision):
                loss = F.cross_entropy(model(x), y)
            loss.backward()
            optimizer.step()
        synchronize(device)
        seconds.append(time.perf_counter() - start)
    return seconds


def clreg_loop(bench, hidden: list[int], method: str, precision: str = "fp32") -> dict:
    """clreg's trainer on the same benchmark and device: training seconds and importance seconds per task."""
    config = RunConfig(method=method, c=1.0, reinit=False, tasks=TASKS, epochs=EPOCHS, batch_size=BATCH, hidden=hidden,
                       precision=precision, device=str(bench.device))
    trainer = Trainer(config, bench, progress=False)
    train, importance = [], []
    for task in range(TASKS):
        before = dict(trainer.timing)
        trainer.train_task(task)
        train.append(trainer.timing["train_seconds"] - before["train_seconds"])
        importance.append(trainer.timing["importance_seconds"] - before["importance_seconds"])
    return {"train": train, "importance": importance}


def summarise(runs: list[dict], flops_per_task: float, peak: float, reference: float | None) -> dict:
    total = statistics.median(sum(r["train"]) for r in runs)
    later = statistics.median(sum(r["train"][1:]) for r in runs)  # tasks 2–3: penalty active
    entry = {"train_seconds": total, "train_all": [sum(r["train"]) for r in runs],
             "tasks_2_3_seconds": later, "fraction_of_matmul_peak": TASKS * flops_per_task / total / peak}
    if reference is not None:
        entry["ratio_to_finetune"] = total / reference["train_seconds"]
        entry["ratio_to_finetune_tasks_2_3"] = later / reference["tasks_2_3_seconds"]
    return entry


def weight_cast_ms(bench, hidden: list[int]) -> float:
    """Median ms to cast every parameter of the MLP to bf16 once: what autocast adds to each step (one cast
    per weight per step, since clreg runs all passes of a step in one autocast region)."""
    params = [p.detach() for p in MLP(bench.in_features, hidden, 10).to(bench.device).parameters()]
    times = []
    for _ in range(21):
        synchronize(bench.device)
        start = time.perf_counter()
        for p in params:
            p.to(torch.bfloat16)
        synchronize(bench.device)
        times.append(time.perf_counter() - start)
    return 1e3 * statistics.median(times[1:])


def measure(bench, hidden: list[int], repeats: int, precision: str = "fp32", methods: list[str] = METHODS) -> dict:
    steps = EPOCHS * (60000 // BATCH)
    shapes = matmul_shapes(hidden, BATCH)
    peak = matmul_peak(shapes, precision=precision, device=str(bench.device))
    flops_per_task = step_flops(shapes) * steps
    plain, runs = [], {m: [] for m in methods}
    for _ in range(repeats):
        plain.append({"train": plain_loop(bench, hidden, steps, precision)})
        for method in methods:
            runs[method].append(clreg_loop(bench, hidden, method, precision))
    row = {"precision": precision, "matmul_peak_gflops": peak / 1e9, "step_gflop": step_flops(shapes) / 1e9,
           "steps_per_task": steps, "plain": summarise(plain, flops_per_task, peak, None), "methods": {}}
    finetune = summarise(runs["finetune"], flops_per_task, peak, None)
    if precision == "bf16":
        row["weight_cast_ms"] = weight_cast_ms(bench, hidden)
        row["weight_cast_share_of_step"] = row["weight_cast_ms"] / (1e3 * finetune["train_seconds"] / (TASKS * steps))
    row["plain"]["ratio_to_finetune"] = row["plain"]["train_seconds"] / finetune["train_seconds"]
    for method in methods:
        entry = summarise(runs[method], flops_per_task, peak, finetune)
        if method == "ewc":  # the first Fisher of a process includes one-time set-up: quoted apart
            later = statistics.median(x for r in runs[method] for x in r["importance"][1:])
            entry["fisher_seconds_per_task"] = later
            entry["fisher_first_task_seconds"] = statistics.median(r["importance"][0] for r in runs[method])
            entry["fisher_share_of_task"] = later / (entry["train_seconds"] / TASKS)
        row["methods"][method] = entry
    return row


def speedups(fp32: dict, bf16: dict) -> None:
    """Each variant's fp32 seconds over its bf16 seconds (same run), kept in the bf16 row and printed."""
    bf16["plain"]["speedup_over_fp32"] = fp32["plain"]["train_seconds"] / bf16["plain"]["train_seconds"]
    for method, entry in bf16["methods"].items():
        entry["speedup_over_fp32"] = fp32["methods"][method]["train_seconds"] / entry["train_seconds"]
    print("  bf16 over fp32: " + ", ".join(f"{name} {e['speedup_over_fp32']:.2f}x" for name, e in
                                           [("plain", bf16["plain"]), *bf16["methods"].items()]), flush=True)


def report(widths: str, row: dict) -> None:
    print(f"widths {widths} {row['precision']}: matmul peak {row['matmul_peak_gflops']:.0f} GFLOP/s on the step's shapes, "
          f"{row['step_gflop']:.2f} GFLOP per step", flush=True)
    plain = row["plain"]
    if "weight_cast_ms" in row:
        print(f"  casting the weights to bf16: {row['weight_cast_ms']:.2f} ms, "
              f"{100 * row['weight_cast_share_of_step']:.1f}% of a finetune step", flush=True)
    print(f"  {'plain':<9} {plain['train_seconds']:7.2f}s  {plain['ratio_to_finetune']:.3f}x finetune  "
          f"{100 * plain['fraction_of_matmul_peak']:.0f}% of peak", flush=True)
    for method, e in row["methods"].items():
        extra = ""
        if "fisher_share_of_task" in e:
            extra = (f"  Fisher {e['fisher_seconds_per_task']:.2f}s/task = {100 * e['fisher_share_of_task']:.1f}% "
                     f"of a task (first, with set-up: {e['fisher_first_task_seconds']:.2f}s)")
        print(f"  {method:<9} {e['train_seconds']:7.2f}s  {e['ratio_to_finetune']:.3f}x finetune "
              f"(tasks 2-3: {e['ratio_to_finetune_tasks_2_3']:.3f}x)  {100 * e['fraction_of_matmul_peak']:.0f}% of peak"
              f"{extra}", flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description="clreg training throughput vs a plain loop and the matmul peak")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--widths", default="2000,2000;400,400",
                        help="widths;widths... each optionally with its own precisions, e.g. 2000,2000:fp32")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--methods", default=",".join(METHODS),
                        help=f"comma-separated, among {', '.join(METHODS)} (finetune, the reference, always runs)")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    methods = ["finetune", *(m for m in args.methods.split(",") if m != "finetune")]
    unknown = [m for m in methods if m not in METHODS]
    if unknown:
        parser.error(f"--methods: unknown {', '.join(unknown)}; choose among {', '.join(METHODS)}")
    bench = permuted_mnist(TASKS, seed=0, data_dir=args.data_dir)
    results = {}
    for entry in args.widths.split(";"):
        widths, _, own = entry.partition(":")  # "400,400:fp32,bf16" names its own precisions
        for precision in (own or args.precisions).split(","):
            key = widths if precision == "fp32" else f"{widths} {precision}"
            results[key] = measure(bench, [int(w) for w in widths.split(",")], args.repeats, precision, methods)
            report(widths, results[key])
            if precision == "bf16" and widths in results:
                speedups(results[widths], results[key])
    record = {"benchmark": "throughput", "tasks": TASKS, "epochs": EPOCHS, "batch_size": BATCH,
              "repeats": args.repeats, "methods": methods, "results": results, "machine": machine(), "versions": versions(),
              "command": " ".join(["python", *sys.argv])}
    if args.out:
        write_json(args.out, record)


if __name__ == "__main__":
    main()
