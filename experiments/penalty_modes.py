"""Online, separate and debiased penalties (docs/algorithms.md §4) on Permuted MNIST at reduced scale.

10 tasks, widths 400,400, 5 epochs; EWC (exact Fisher) and SOS (α = 0, re-init, as in the reduced-scale
table); for each penalty mode c is chosen on the validation split (seed 0) from a small grid around
the reduced-scale optimum (extended ×2 while the best value sits on an edge), then run with seeds 0–2
on the test split, logging every 117 steps each earlier task's proxy loss Σ Λ_t (θ − θ̃_t)² next to
the measured rise of its loss on 500 test images. Debiased runs also revisit task 1 at the end.
Runs go to experiments/results/penalty-modes/ (one JSON each; existing ones are not re-run) and the
summary to summary.json there. Two worker processes with one thread each (small runs on 2 cores).

    python experiments/penalty_modes.py --data-dir ../shared/datasets
"""
from __future__ import annotations

import argparse
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

import numpy as np

OUT = Path(__file__).parent / "results" / "penalty-modes"
SCALE = dict(benchmark="permuted-mnist", tasks=10, hidden=[400, 400], epochs=5, batch_size=256)
METHODS = {"fisher": (False, [20.0, 40.0, 80.0]), "sos": (True, [2.5, 5.0, 10.0])}  # (re-init, grid)
MODES = ("online", "separate", "debiased")
SEEDS = (0, 1, 2)


def _single_thread() -> None:
    import torch

    torch.set_num_threads(1)


def one(args: tuple) -> dict:
    """Run one configuration (or read its JSON); returns the result."""
    method, mode, c, seed, evaluate_on, data_dir, path = args
    path = Path(path)
    if path.exists():
        return json.loads(path.read_text())
    from clreg.train.config import RunConfig
    from clreg.core.records import provenance, write_json
    from clreg.train.loop import run

    reinit, _ = METHODS[method]
    final = evaluate_on == "test"
    config = RunConfig(method=method, c=c, reinit=reinit, seed=seed, evaluate_on=evaluate_on, data_dir=data_dir,
                       penalty=mode, proxy_every=117 if final else 0, revisit=final and mode == "debiased", **SCALE)
    result = run(config, progress=False)
    result.update(provenance())
    path.parent.mkdir(parents=True, exist_ok=True)
    write_json(path, result)
    return result


def select(pool, data_dir: str) -> dict:
    """Stage 1: c per (method, mode) by validation average accuracy, seed 0."""
    chosen, grids = {}, {(m, mode): list(METHODS[m][1]) for m in METHODS for mode in MODES}
    results: dict = {key: {} for key in grids}
    for _ in range(3):  # at most two ×2 extensions
        jobs = [(m, mode, c, 0, "validation", data_dir, str(OUT / f"select-{m}-{mode}-c{c:g}.json"))
                for (m, mode), cs in grids.items() for c in cs if c not in results[m, mode]]
        for job, result in zip(jobs, pool.map(one, jobs)):
            results[job[0], job[1]][job[2]] = result["average_accuracy"]
        grids = {}
        for key, tried in results.items():
            best = max(tried, key=tried.get)
            chosen[key] = best
            if best == max(tried):
                grids[key] = [best * 2]
            elif best == min(tried):
                grids[key] = [best / 2]
        if not grids:
            break
    return {key: (chosen[key], results[key]) for key in chosen}


def summarise(runs: list[dict]) -> dict:
    averages = [r["average_accuracy"] for r in runs]
    final = np.array([r["accuracy_matrix"][-1] for r in runs])
    correlations = [r["proxy_losses"]["correlation_proxy_vs_loss_increase"] for r in runs]
    row = {"average_accuracy_mean": statistics.mean(averages),
           "average_accuracy_se": statistics.stdev(averages) / len(averages) ** 0.5 if len(averages) > 1 else None,
           "final_accuracy_per_task": final.mean(0).tolist(), "seeds": len(runs),
           "proxy_correlation_mean": statistics.mean(correlations)}
    revisits = [r["revisit"] for r in runs if "revisit" in r]
    if revisits:
        row["revisit_task1_before"] = statistics.mean(v["accuracy_before"][0] for v in revisits)
        row["revisit_task1_after"] = statistics.mean(v["accuracy_after"][0] for v in revisits)
        row["revisit_average_after"] = statistics.mean(sum(v["accuracy_after"]) / len(v["accuracy_after"])
                                                       for v in revisits)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--workers", type=int, default=2)
    args = parser.parse_args()
    from clreg.core.records import machine, versions, write_json

    with ProcessPoolExecutor(args.workers, initializer=_single_thread) as pool:
        chosen = select(pool, args.data_dir)
        jobs = [(m, mode, chosen[m, mode][0], seed, "test", args.data_dir,
                 str(OUT / f"{m}-{mode}-c{chosen[m, mode][0]:g}-seed{seed}.json"))
                for m in METHODS for mode in MODES for seed in SEEDS]
        runs = list(pool.map(one, jobs))
    table = {}
    for m in METHODS:
        for mode in MODES:
            mine = [r for job, r in zip(jobs, runs) if job[:2] == (m, mode)]
            c, grid = chosen[m, mode]
            table[f"{m}/{mode}"] = {"c": c, "validation_grid": {f"{k:g}": v for k, v in grid.items()},
                                    **summarise(mine)}
            row = table[f"{m}/{mode}"]
            print(f"{m:<7}{mode:<9} c={c:<6g} avg {100 * row['average_accuracy_mean']:.2f}% "
                  f"± {100 * (row['average_accuracy_se'] or 0):.2f}  per task "
                  + " ".join(f"{100 * a:.0f}" for a in row["final_accuracy_per_task"])
                  + f"  proxy r {row['proxy_correlation_mean']:.3f}", flush=True)
    write_json(OUT / "summary.json", {"scale": SCALE, "seeds": list(SEEDS), "selection": "validation, seed 0",
                                      "methods": table, "machine": machine(), "versions": versions(),
                                      "command": " ".join(["python", *sys.argv])})


if __name__ == "__main__":
    main()
