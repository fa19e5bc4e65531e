"""Appendix B's first prediction, read off a finished task-size sweep: final accuracy on the small and on the
full-size tasks, per method and order, over the final seeds (mean ± s.e.).

    python experiments/task_sizes.py runs/pmnist-task-sizes.sqlite experiments/sweeps/pmnist-task-sizes-reduced.yaml \
        --out experiments/results/sweeps/pmnist-task-sizes-reduced/summary.json

A task is small if its training set is below the largest one. "Small tasks, end" is the accuracy on the small
tasks after the last task, "just after" the accuracy on each small task right after it was trained; their
difference is what the small tasks lost to the later ones.
"""
from __future__ import annotations

import argparse

import numpy as np

from clreg.train.metrics import mean_and_stderr
from clreg.core.records import write_json
from clreg.sweeps.store import Store
from clreg.sweeps.plan import plan, stored_lookup
from clreg.sweeps.spec import load_spec


def row(label: str, state) -> dict:
    """Per entry: the chosen setting and the small/full tasks' accuracy over its final seeds."""
    finals = [r for r in state.final if r["status"] == "done"]
    sizes = np.asarray(finals[0]["config"]["task_sizes"])
    small = sizes < sizes.max()
    per_seed = []
    for r in finals:
        a = np.asarray(r["result"]["accuracy_matrix"])
        last = a[-1]
        per_seed.append({"average": last.mean(), "small_end": last[small].mean(), "full_end": last[~small].mean(),
                         "small_just_after": np.diag(a)[small].mean()})
    out = {"entry": label, "c": state.selected[0], "reinit": state.selected[1].reinit, "seeds": len(finals)}
    for key in per_seed[0]:
        mean, error = mean_and_stderr([100 * s[key] for s in per_seed])
        out[key] = {"mean": mean, "se": error}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("spec")
    parser.add_argument("--out", default=None)
    args = parser.parse_args()
    spec = load_spec(args.spec)
    _, states = plan(spec, stored_lookup(Store(args.store)))
    rows = [row(label, state) for label, state in states.items() if state.complete]
    cell = lambda v: f"{v['mean']:.2f} ± {v['se']:.2f}"  # noqa: E731
    print("| entry | c (re-init) | average | small tasks, end | small tasks, just after | full tasks, end |")
    print("| --- | --- | --- | --- | --- | --- |")
    for r in rows:
        print(f"| {r['entry']} | {r['c']:g} ({'on' if r['reinit'] else 'off'}) | {cell(r['average'])} | "
              f"{cell(r['small_end'])} | {cell(r['small_just_after'])} | {cell(r['full_end'])} |")
    if args.out:
        write_json(args.out, {"command": f"python experiments/task_sizes.py {args.store} {args.spec}", "rows": rows})


if __name__ == "__main__":
    main()
