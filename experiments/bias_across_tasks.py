"""Why does Σ SI / Σ SIU grow from task to task? On Permuted MNIST it rises from 4.15 (task 1) to 4.79 (task 10) at
reduced scale and from 7.1 to 8.8 at full scale, while every task's loss decrease stays about the same.
With re-init each task starts from fresh weights, so the tasks differ only in the penalty acting on them
(task 1 has none). This runs the reduced-scale bias analysis (400,400, 5 epochs, SI with re-init, seed 0,
the training-set gradient every 25 steps) with c = 0 and sets it beside the committed c = 5 analysis
(experiments/results/analyses/permuted-mnist/bias/): if the growth is the penalty's, it is gone at c = 0.

    python experiments/bias_across_tasks.py --data-dir ../shared/datasets

Results in experiments/results/bias-across-tasks/: c0/ (the analysis's JSON, figures and summary), and the
per-task table in summary.json and summary.md. A finished c = 0 analysis is read back, not run again.
"""
from __future__ import annotations

import argparse
import json
from pathlib import Path

from clreg.analysis import analyze
from clreg.train.config import RunConfig
from clreg.core.records import provenance, write_json

RESULTS = Path(__file__).parent / "results"
OUT = RESULTS / "bias-across-tasks"
PENALISED = RESULTS / "analyses" / "permuted-mnist" / "bias" / "bias.json"  # c = 5, from experiments/analyses.py
SETTING = dict(benchmark="permuted-mnist", tasks=10, hidden=[400, 400], epochs=5, method="si", reinit=True, seed=0)


def unpenalised(data_dir: str | None) -> dict:
    """The same analysis with c = 0: SI's sums on a run without any penalty."""
    path = OUT / "c0" / "bias.json"
    if not path.exists():
        analyze("bias", RunConfig(c=0.0, data_dir=data_dir, **SETTING), path.parent, every=25, progress=False)
    return json.loads(path.read_text())


def per_task(data: dict) -> list[dict]:
    """Each task's sums, loss decrease and Σ SI / Σ SIU."""
    return [{"task": t["task"] + 1, **t["totals"], "loss_decrease": t["loss_decrease"],
             "full_gradient_path": t["full_gradient_path"], "ratio": t["ratio_si_to_siu"]} for t in data["tasks"]]


def table(rows: dict[str, list[dict]]) -> str:
    """Markdown: one line per task, both settings side by side."""
    names = list(rows)
    head = " | ".join(f"{n}: Σ SI | Σ SIU | Σ SIB | loss decrease | Σ SI / Σ SIU" for n in names)
    lines = [f"| task | {head} |", "| --- |" + " --- |" * (5 * len(names))]
    for i in range(len(rows[names[0]])):
        cells = " | ".join(f"{r['si']:.1f} | {r['siu']:.2f} | {r['sib']:.1f} | {r['loss_decrease']:.2f} | {r['ratio']:.2f}"
                           for r in (rows[n][i] for n in names))
        lines.append(f"| {i + 1} | {cells} |")
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data-dir", default=None)
    args = parser.parse_args()
    rows = {"c = 0": per_task(unpenalised(args.data_dir)), "c = 5": per_task(json.loads(PENALISED.read_text()))}
    write_json(OUT / "summary.json", {"setting": SETTING, "rows": rows, **provenance()})
    (OUT / "summary.md").write_text("# Σ SI / Σ SIU per task, without and with SI's penalty (P-MNIST, 400,400, "
                                    "5 epochs, re-init, seed 0)\n\n" + table(rows))
    print(table(rows))


if __name__ == "__main__":
    main()
