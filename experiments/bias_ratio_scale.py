"""Which of width and epochs raises SI's bias share? Σ SI / Σ SIU on Permuted MNIST's first task was 4.15 at
reduced scale (400,400, 5 epochs) and 7.10 at full scale (2000,2000, 20 epochs). This runs `clreg analyze bias`
on task 1 alone for the 2 × 2 grid of widths {400,400, 2000,2000} × epochs {5, 20}, seeds 0–2 (the full-scale
corner: seed 0 only, taken from the full-scale analysis, as a new seed there costs 15 minutes).

Task 1 is the clean comparison: no penalty acts on it, so c does not enter (the runs keep the reduced
scale's c = 5 and re-init); batch 256, Adam lr 1e-3
and ξ = 0.1 as in both analyses. Each run's JSON in experiments/results/bias-ratio-scale/<setting>/; the table
in summary.json and summary.md. A run whose JSON exists is not run again.

    python experiments/bias_ratio_scale.py --data-dir ../shared/datasets
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch

from clreg.analysis import analyze
from clreg.analysis.bias import recorded_steps
from clreg.analysis.plots import pyplot, save
from clreg.train.config import RunConfig
from clreg.core.records import provenance, write_json

OUT = Path(__file__).parent / "results" / "bias-ratio-scale"
FULL = Path(__file__).parent / "results" / "analyses" / "permuted-mnist-full" / "bias" / "bias.json"
WIDTHS, EPOCHS, SEEDS = (400, 2000), (5, 20), (0, 1, 2)
EVERY = 235  # one training-set gradient per epoch: it does not enter the sums, only the figures


def settings() -> list[tuple[int, int, int]]:
    """(width, epochs, seed) of every run; the full-scale corner's seed 0 comes from the full analysis."""
    return [(w, e, s) for w in WIDTHS for e in EPOCHS for s in SEEDS if (w, e) != (2000, 20)]


def run_one(width: int, epochs: int, seed: int, data_dir: str | None) -> dict:
    """Task 1 of Permuted MNIST with the bias probe; the JSON is kept, so a finished run is read back."""
    out = OUT / f"w{width}-e{epochs}-s{seed}"
    path = out / "bias.json"
    if not path.exists():
        config = RunConfig(benchmark="permuted-mnist", tasks=1, hidden=[width, width], epochs=epochs,
                           method="si", c=5.0, reinit=True, seed=seed, data_dir=data_dir)
        analyze("bias", config, out, every=EVERY, progress=False)  # its JSON names the command, machine, versions
    return read(path)


def read(path: Path) -> dict:
    """Task 1's sums from a bias JSON, and Σ SI / Σ SIU at the end of each epoch."""
    data = json.loads(path.read_text())
    task, epochs = data["tasks"][0], data["config"]["epochs"]
    index = {step: i for i, step in enumerate(recorded_steps(task))}  # every epoch's end is recorded
    steps = max(index)
    ends = [index[round(steps * (e + 1) / epochs)] for e in range(epochs)]  # each epoch's last step
    return {"steps": steps, **{k: task["totals"][k] for k in ("si", "siu", "sib")},
            "loss_decrease": task["loss_decrease"], "ratio": task["ratio_si_to_siu"],
            "ratio_per_epoch": [task["si"][i] / task["siu"][i] for i in ends],
            "sib_per_epoch": [task["sib"][i] for i in ends], "siu_per_epoch": [task["siu"][i] for i in ends],
            "seed": data["config"]["seed"], "wall_seconds": data.get("wall_seconds")}


def figure(rows: dict[tuple[int, int], list[dict]], stem: Path) -> None:
    """Σ SI / Σ SIU, Σ SIB and Σ SIU at the end of each epoch of the 20-epoch runs, one colour per width."""
    plt = pyplot()
    fig, axes = plt.subplots(1, 3, figsize=(13, 3.8))
    for (width, epochs), runs in rows.items():
        if epochs != max(EPOCHS):
            continue
        for i, run in enumerate(runs):
            x = range(1, epochs + 1)
            style = dict(color="C0" if width == WIDTHS[0] else "C3", alpha=0.8,
                         label=f"{width},{width}" if i == 0 else None)
            for ax, key in zip(axes, ("ratio_per_epoch", "sib_per_epoch", "siu_per_epoch")):
                ax.plot(x, run[key], marker=".", **style)
    titles = ("Σ SI / Σ SIU", "Σ SIB (the bias)", "Σ SIU (unbiased)")
    for ax, title in zip(axes, titles):
        ax.set(xlabel="epoch of task 1", title=title)
        ax.legend(title="widths")
    fig.suptitle("Permuted MNIST task 1, SI's sums at the end of each epoch (seeds 0-2; 2000,2000: seed 0)")
    save(fig, stem)


def table(rows: dict[tuple[int, int], list[dict]]) -> str:
    """Markdown: one line per (width, epochs), means over the seeds run."""
    lines = ["| widths | epochs | steps | seeds | Σ SI | Σ SIU | Σ SIB | loss decrease | Σ SI / Σ SIU (each seed) |",
             "| --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for (w, e), runs in rows.items():
        mean = {k: statistics.fmean(r[k] for r in runs) for k in ("si", "siu", "sib", "loss_decrease", "ratio")}
        each = ", ".join(f"{r['ratio']:.2f}" for r in runs)
        lines.append(f"| {w},{w} | {e} | {runs[0]['steps']} | {len(runs)} | {mean['si']:.1f} | {mean['siu']:.1f} | "
                     f"{mean['sib']:.1f} | {mean['loss_decrease']:.2f} | {mean['ratio']:.2f} ({each}) |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    rows: dict[tuple[int, int], list[dict]] = {}
    for width, epochs, seed in settings():
        rows.setdefault((width, epochs), []).append(run_one(width, epochs, seed, args.data_dir))
        print(width, epochs, seed, f"{rows[width, epochs][-1]['ratio']:.3f}", flush=True)
    rows[2000, 20] = [read(FULL)]
    write_json(OUT / "summary.json", {"rows": [{"width": w, "epochs": e, "runs": runs} for (w, e), runs in rows.items()],
                                      **provenance()})
    (OUT / "summary.md").write_text(table(rows))
    figure(rows, OUT / "ratio-per-epoch")
    print(table(rows))


if __name__ == "__main__":
    main()
