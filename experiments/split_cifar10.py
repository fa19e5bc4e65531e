"""Split CIFAR-10 (5 tasks of 2 classes, multi-head, the CIFAR network of docs/algorithms.md §6) at a scale that finishes
in the background within a session: 5 epochs per task (the paper: 60), seed 0, the paper's Split-CIFAR c values
and re-init; then the same c without re-init, since 5 epochs give a re-drawn network few steps to return.

Resumable: a run whose JSON exists is not run again. Writes one JSON per run and summary.json.

    python experiments/split_cifar10.py --data-dir ../shared/datasets
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

from clreg.train.config import RunConfig
from clreg.core.records import machine, provenance, versions, write_json
from clreg.train.loop import run

OUT = Path(__file__).parent / "results" / "split-cifar10"
PAPER_VALUES = {"finetune": 0.0, "si": 5.0, "sos": 500.0, "mas": 200.0, "ewc": 5e4}  # docs/algorithms.md §10, Split CIFAR
SCALE = dict(benchmark="split-cifar10", epochs=5, batch_size=256, seed=0)


def one(method: str, reinit: bool, data_dir: str | None) -> dict:
    c = PAPER_VALUES[method]
    path = OUT / f"{method}-c{c:g}-{'reinit' if reinit else 'noreinit'}.json"
    if path.exists():
        return json.loads(path.read_text())
    start = time.perf_counter()
    result = run(RunConfig(method=method, c=c, reinit=reinit, data_dir=data_dir, **SCALE), progress=False)
    result.update(wall_seconds=time.perf_counter() - start, **provenance())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


def images_per_task(result: dict) -> int:
    """Training images seen per task: epochs × ⌊n/b⌋ × b."""
    cfg = result["config"]
    return sum(cfg["epochs"] * (n // cfg["batch_size"]) * cfg["batch_size"] for n in result["benchmark"]["train_size"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--methods", default=",".join(PAPER_VALUES), help="comma-separated subset")
    parser.add_argument("--reinit", default="on,off", help="on, off or on,off (in that order)")
    args = parser.parse_args()
    methods = args.methods.split(",")
    runs = [("finetune", False)] if "finetune" in methods else []  # plain fine-tuning: nothing to re-init for
    for setting in args.reinit.split(","):
        runs += [(m, setting == "on") for m in methods if m != "finetune"]
    rows = []
    for method, reinit in runs:
        result = one(method, reinit, args.data_dir)
        seconds_per_10k = 1e4 * result["timing"]["train_seconds"] / images_per_task(result)
        rows.append({"method": method, "c": PAPER_VALUES[method], "reinit": reinit,
                     "average_accuracy": result["average_accuracy"], "mean_forgetting": result["mean_forgetting"],
                     "bwt": result["bwt"], "accuracy_matrix": result["accuracy_matrix"],
                     "train_seconds": result["timing"]["train_seconds"],
                     "importance_seconds": result["timing"]["importance_seconds"],
                     "train_seconds_per_10k_images": seconds_per_10k})
        print(f"{method:<9} reinit {'on' if reinit else 'off':<3} c={PAPER_VALUES[method]:<8g} "
              f"avg {100 * result['average_accuracy']:.2f}%  "
              f"forgetting {100 * result['mean_forgetting']:.2f}%  {seconds_per_10k:.1f} s / 10k images", flush=True)
    write_json(OUT / "summary.json", {"scale": SCALE, "rows": rows, "machine": machine(), "versions": versions(),
                                      "command": " ".join([sys.executable, *sys.argv])})


if __name__ == "__main__":
    main()
