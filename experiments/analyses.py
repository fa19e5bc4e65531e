"""The paper's analyses (docs/algorithms.md §9) at reduced scale: `clreg analyze measures`, `bias` and `noise` on Permuted
MNIST (10 tasks, widths 400,400, 5 epochs, SI with its reduced-scale c and re-init, as in
experiments/pmnist_reduced.py) and on split-cifar10 (5 tasks, 5 epochs, the CIFAR network, SI with the paper's c).

Each analysis writes its JSON, figures and summary.md into experiments/results/analyses/<benchmark>/<kind>/;
one whose JSON exists is not run again.

    python experiments/analyses.py --data-dir ../shared/datasets

With --full: measures and bias at the paper's full scale (P-MNIST, 2000,2000, 20 epochs, SI c = 0.2 with
re-init), together on one run, the training-set gradient every 470 steps (10 per task), the bias's running
sums kept every 10 steps and at each epoch's end (exact there; every step would be 3 MB), checkpointed after
every task into runs/analyses-full.pt and resumed from it; results in .../permuted-mnist-full/<kind>/, written
after every task. On a machine without that checkpoint it extends the committed JSON: the recorded tasks are
trained again without probes (plain SI training), then the rest are recorded. About 18 min per recorded task
and 6 min per replayed one with 2 threads on the 2-core CPU VM; minutes on a GPU.

    python experiments/analyses.py --full --data-dir ../shared/datasets [--device cuda]
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from clreg.analysis import analyze, analyze_together
from clreg.train.config import RunConfig

OUT = Path(__file__).parent / "results" / "analyses"
SETTINGS = {
    "permuted-mnist": dict(benchmark="permuted-mnist", tasks=10, hidden=[400, 400], epochs=5, method="si", c=5.0,
                           reinit=True),
    "split-cifar10": dict(benchmark="split-cifar10", epochs=5, method="si", c=5.0, reinit=False),
}
OPTIONS = {  # per benchmark and analysis: steps between full gradients; the large sample of the measures analysis
    "permuted-mnist": {"measures": dict(large_samples=10000), "bias": dict(every=25), "noise": dict(every=25)},
    "split-cifar10": {"measures": dict(), "bias": dict(every=100), "noise": dict(every=100)},
}
FULL = dict(benchmark="permuted-mnist", tasks=10, hidden=[2000, 2000], epochs=20, method="si", c=0.2, reinit=True)
FULL_KINDS, FULL_EVERY, FULL_RECORD_EVERY = ("measures", "bias"), 470, 10
FULL_CHECKPOINT = Path("runs") / "analyses-full.pt"


def full_scale(data_dir: str | None, device: str) -> None:
    """Measures and bias at full scale on one run, resumable."""
    dirs = {kind: OUT / "permuted-mnist-full" / kind for kind in FULL_KINDS}
    paths = [dirs[kind] / f"{kind}.json" for kind in FULL_KINDS]
    if all(p.exists() and json.loads(p.read_text())["complete"] for p in paths):
        for path in paths:  # finished: not run again (a leftover checkpoint, resumed, would write it anew)
            print((path.parent / "summary.md").read_text(), flush=True)
        return
    config = RunConfig(seed=0, data_dir=data_dir, device=device, **FULL)
    analyze_together(FULL_KINDS, config, dirs, every=FULL_EVERY, progress=False, checkpoint=FULL_CHECKPOINT,
                     resume=True, extend=True, record_every=FULL_RECORD_EVERY)
    for kind in FULL_KINDS:
        print((dirs[kind] / "summary.md").read_text(), flush=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--benchmarks", default=",".join(SETTINGS))
    parser.add_argument("--kinds", default="measures,bias,noise")
    parser.add_argument("--full", action="store_true", help="measures and bias at full scale instead")
    parser.add_argument("--device", default="cpu")
    args = parser.parse_args()
    if args.full:
        return full_scale(args.data_dir, args.device)
    for name in args.benchmarks.split(","):
        for kind in args.kinds.split(","):
            out = OUT / name / kind
            if (out / f"{kind}.json").exists():
                continue
            config = RunConfig(seed=0, data_dir=args.data_dir, **SETTINGS[name])
            data = analyze(kind, config, out, progress=False, **OPTIONS[name][kind])
            print(f"{name} {kind}: {data['wall_seconds']:.0f} s", flush=True)
            print((out / "summary.md").read_text(), flush=True)
    print(json.dumps({"done": True}))


if __name__ == "__main__":
    main()
