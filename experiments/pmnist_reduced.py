"""Every method on Permuted MNIST at reduced scale (10 tasks, widths 400,400, 5 epochs, seed 0).

Starts from the paper's P-MNIST values (docs/algorithms.md §10) of c and re-init and searches a small grid around them (the
reduced scale changes the right c: SI's path integral grows with the number of steps, and 5 epochs
are a quarter of the paper's 20). Following the paper's P-MNIST protocol, the grid point is chosen by
test accuracy (the paper: "For MNIST, we measured HP-quality on the test set"). Measures without a
paper value borrow their relative's (masx from mas, masx-logits from mas-logits) or use a plain grid.
Resumable: a grid point whose JSON exists is not run again.

    python experiments/pmnist_reduced.py --data-dir ../shared/datasets
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

OUT = Path(__file__).parent / "results" / "pmnist-reduced"
PAPER_VALUES = {  # method: (c, reinit) from docs/algorithms.md §10 (P-MNIST column)
    "finetune": (0.0, False), "si": (0.2, True), "siu": (2.0, True), "sib": (0.5, True), "sos": (1.0, True),
    "mas": (500.0, False), "af": (200.0, False), "sqrt-fisher": (2.0, False), "fisher": (1000.0, False),
    "mas-logits": (0.001, True), "masx": (500.0, False), "masx-logits": (0.001, True),
    "weight-magnitude": (1.0, False), "l2": (0.1, False), "l2-const": (0.1, False),
}
GRID = {"finetune": [1.0], "si": [1, 5, 25], "siu": [1, 5, 25], "sib": [1, 5, 25]}  # multiples of the start
DEFAULT_GRID = [0.2, 1, 5]
MAX_EXTENSIONS = 3  # the grid is extended by ×5 steps while the best c sits on its edge


def edge_extension(tried: list[float], best: float) -> list[float]:
    """The next c to try when the best one is the largest or smallest tried (docs/algorithms.md §8), else none."""
    if len(tried) < 2 or best == 0:
        return []
    if best == tried[-1]:
        return [float(f"{best * 5:.6g}")]
    if best == tried[0]:
        return [float(f"{best / 5:.6g}")]
    return []
SCALE = dict(benchmark="permuted-mnist", tasks=10, hidden=[400, 400], epochs=5, batch_size=256, seed=0)


def one(method: str, c: float, reinit: bool, data_dir: str, evaluate_on: str, path: Path) -> dict:
    if path.exists():
        return json.loads(path.read_text())
    config = RunConfig(method=method, c=c, reinit=reinit, evaluate_on=evaluate_on, data_dir=data_dir, **SCALE)
    result = run(config, progress=False)
    result.update(provenance())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--methods", default=",".join(PAPER_VALUES), help="comma-separated subset")
    args = parser.parse_args()
    table = {}
    for method in args.methods.split(","):
        start = time.perf_counter()
        c0, reinit = PAPER_VALUES[method]
        grid = {}
        values = [float(f"{c0 * factor:.6g}") for factor in GRID.get(method, DEFAULT_GRID)]
        for _ in range(MAX_EXTENSIONS + 1):
            for c in values:
                grid[c] = one(method, c, reinit, args.data_dir, "test", OUT / f"{method}-c{c:g}.json")
            best = max(grid, key=lambda c: grid[c]["average_accuracy"])
            values = edge_extension(sorted(grid), best)
            if not values:
                break
        result = grid[best]
        table[method] = {"c": best, "reinit": reinit, "average_accuracy": result["average_accuracy"],
                         "mean_forgetting": result["mean_forgetting"], "bwt": result["bwt"],
                         "grid": {f"{c:g}": r["average_accuracy"] for c, r in grid.items()},
                         "importance_seconds": result["timing"]["importance_seconds"],
                         "train_seconds": result["timing"]["train_seconds"]}
        print(f"{method:<17} c={best:<8g} reinit={reinit!s:<5} avg {100 * result['average_accuracy']:.2f}% "
              f"forgetting {100 * result['mean_forgetting']:.2f}%  grid "
              + " ".join(f"{c:g}:{100 * r['average_accuracy']:.1f}" for c, r in grid.items())
              + f"  ({time.perf_counter() - start:.0f}s)", flush=True)
    if table:
        write_json(OUT / "summary.json", {"scale": SCALE, "seed": 0, "selection": "best test average accuracy",
                                          "methods": table, "machine": machine(),
                                          "command": " ".join(["python", *sys.argv]), "versions": versions()})


if __name__ == "__main__":
    main()
