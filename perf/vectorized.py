"""Runs per hour of vectorised jobs (clreg.vectorized.trainer) against runs trained one at a time.

For each network and K, one vectorised job of K SI runs (seeds 0..K−1, the authors' P-MNIST c) and, in the
same round, one run alone through the ordinary trainer take `--steps` training steps of task 2 (so the
penalty is active: task 1 is consolidated first, with a few steps). The time per step gives runs per hour at
the full protocol's step count (10 tasks × 20 epochs × 234 steps on P-MNIST; the post-task work, a small
share of a run, is left out on both sides). Medians over `--repeats` interleaved rounds. A K whose job does
not fit the device's free memory (clreg.vectorized.trainer.fitting_size) is reported as such and skipped.

    python perf/vectorized.py --data-dir ../shared/datasets --out perf/results/vectorized_cpu.json
    python perf/vectorized.py --device cuda --sizes 1,4,16,64 --out perf/results/vectorized_gpu.json
"""
from __future__ import annotations

import argparse
import statistics
import time

import torch

from clreg.train.config import RunConfig
from clreg.core.device import describe, synchronize
from clreg.core.records import machine, versions, write_json
from clreg.train.loop import Trainer, load_benchmark
from clreg.vectorized.trainer import VectorizedTrainer, fitting_size

NETWORKS = {"mlp 400,400": ("permuted-mnist", "mlp", [400, 400]), "mlp 2000,2000": ("permuted-mnist", "mlp", [2000, 2000]),
            "cifar-cnn": ("split-cifar10", "cifar-cnn", [32, 64, 512])}
FULL_STEPS = {"permuted-mnist": 10 * 20 * 234, "split-cifar10": 5 * 60 * 35}


def configs(network: str, size: int, device: str, data_dir: str | None) -> list[RunConfig]:
    benchmark, name, widths = NETWORKS[network]
    return [RunConfig(benchmark=benchmark, network=name, hidden=widths, method="si", seed=seed, tasks=2, epochs=1,
                      device=device, data_dir=data_dir) for seed in range(size)]


def seconds_per_step(step, steps: int, device) -> float:
    step()  # warm-up
    synchronize(device)
    start = time.perf_counter()
    for _ in range(steps):
        step()
    synchronize(device)
    return (time.perf_counter() - start) / steps


def vectorised_step(job: VectorizedTrainer):
    plans = {k: job.members[k].open_task(1) for k in range(job.size)}
    live = list(range(job.size))
    counter = iter(range(10 ** 9))
    return lambda: job._step(1, next(counter), live, plans)


def alone_step(trainer: Trainer):
    plan = trainer.open_task(1)
    counter = iter(range(10 ** 9))

    def step():
        batch = trainer.next_batch(plan, next(counter))
        loss, penalty = trainer.step(plan.optimizer, plan.forward, batch.x, batch.y, batch.independent)
        trainer.after_step(plan, batch, loss, penalty)
    return step


def measure(network: str, sizes: list[int], steps: int, repeats: int, warm: int, device: str,
            data_dir: str | None) -> dict:
    base = configs(network, 1, device, data_dir)[0]
    bench = load_benchmark(base)
    fits = fitting_size(base, bench, max(sizes))
    rows = []
    for size in sizes:
        if size > fits:
            rows.append({"runs": size, "fits": False})
            print(f"{network} K={size}: does not fit (at most {fits})", flush=True)
            continue
        vec, one = [], []
        for _ in range(repeats):
            job = VectorizedTrainer(configs(network, size, device, data_dir))
            for member in job.members:
                member.steps_per_task = lambda task, warm=warm: warm  # task 1: a few steps, then consolidation
            job.train_task(0, list(range(size)))
            vec.append(seconds_per_step(vectorised_step(job), steps, job.device))
            del job
            trainer = Trainer(base, load_benchmark(base), progress=False)
            trainer.steps_per_task = lambda task, warm=warm: warm
            trainer.train_task(0)
            one.append(seconds_per_step(alone_step(trainer), steps, trainer.device))
            del trainer
        t_vec, t_one = statistics.median(vec), statistics.median(one)
        full = FULL_STEPS[NETWORKS[network][0]]
        row = {"runs": size, "fits": True, "seconds_per_step_vectorized": t_vec, "seconds_per_step_alone": t_one,
               "runs_per_hour_vectorized": 3600 * size / (full * t_vec), "runs_per_hour_alone": 3600 / (full * t_one),
               "speedup": size * t_one / t_vec}
        rows.append(row)
        print(f"{network} K={size}: {t_vec * 1e3:.2f} ms per step for {size} runs, alone {t_one * 1e3:.2f} ms: "
              f"{row['runs_per_hour_vectorized']:.2f} against {row['runs_per_hour_alone']:.2f} runs/h "
              f"({row['speedup']:.2f}x)", flush=True)
    return {"network": network, "full_protocol_steps": FULL_STEPS[NETWORKS[network][0]], "most_that_fit": fits,
            "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--networks", default="mlp 400,400;mlp 2000,2000;cifar-cnn",
                        help=f"';'-separated, of: {'; '.join(NETWORKS)}")
    parser.add_argument("--sizes", default="1,4,16,64", help="K values, comma-separated")
    parser.add_argument("--steps", type=int, default=20, help="timed steps per measurement")
    parser.add_argument("--warm", type=int, default=5, help="steps of task 1 before its consolidation")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    sizes = [int(k) for k in args.sizes.split(",")]
    results = [measure(n.strip(), sizes, args.steps, args.repeats, args.warm, args.device, args.data_dir)
               for n in args.networks.split(";")]
    device = describe(torch.device(args.device if args.device != "cuda" else "cuda:0"))
    out = {"benchmark": "vectorized", "method": "si", "steps": args.steps, "repeats": args.repeats,
           "threads": torch.get_num_threads(), "device": device, "machine": machine(), "versions": versions(),
           "results": results}
    if args.out:
        write_json(args.out, out)


if __name__ == "__main__":
    main()
