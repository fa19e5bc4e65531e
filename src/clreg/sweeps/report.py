"""`clreg report`: a store's sweeps as the paper's table 1 (methods × benchmarks, mean ± s.e. over
seeds) in markdown and CSV, the grid search's curves (search metric against c) and the mean accuracy
matrix of every chosen configuration as a heatmap."""
from __future__ import annotations

import csv
import math
import re
from pathlib import Path

import numpy as np

from clreg.analysis.plots import pyplot, save
from clreg.train.metrics import mean_and_stderr
from clreg.core.records import write_json
from clreg.sweeps.store import Store
from clreg.sweeps.plan import EntryState, plan, stored_lookup
from clreg.sweeps.spec import SweepSpec

COLUMNS = ("sweep", "benchmark", "label", "method", "c", "reinit", "grid", "seeds_done", "seeds", "mean", "stderr",
           "mean_forgetting", "search_score", "best_c_at_grid_edge", "status")


def sweep_states(store: Store) -> dict[str, tuple[SweepSpec, dict[str, EntryState]]]:
    """Every sweep in the store with the state of each of its methods (finished runs only)."""
    lookup = stored_lookup(store)
    out = {}
    for name, data in store.sweeps().items():
        spec = SweepSpec.from_dict(data)
        out[name] = (spec, plan(spec, lookup)[1])
    return out


def entry_row(spec: SweepSpec, state: EntryState) -> dict:
    """One table row: the chosen (c, re-init), its final runs' mean ± s.e. of the metric, the status."""
    done = [r["result"] for r in state.final if r["status"] == "done"]
    row = {"sweep": spec.name, "benchmark": spec.benchmark, "label": state.entry.label, "method": state.entry.method,
           "c": None, "reinit": None, "grid": None, "seeds_done": len(done), "seeds": len(spec.seeds), "mean": None, "stderr": None,
           "mean_forgetting": None, "search_score": None, "best_c_at_grid_edge": None,
           "status": "complete" if state.complete else ("final runs" if state.search_done else "searching")}
    if state.selected is not None:
        c, line = state.selected
        row.update(c=c, reinit=line.reinit, grid=dict(line.point) or None, search_score=state.curves[line][c],
                   best_c_at_grid_edge=state.at_edge.get(line, False))
    if done:
        row["mean"], row["stderr"] = mean_and_stderr([r[spec.metric] for r in done])
        row["mean_forgetting"] = float(np.mean([r["mean_forgetting"] for r in done]))
    diverged = sum(r["status"] == "diverged" for r in state.final)
    if diverged:
        row["status"] += f", {diverged} final run(s) diverged"
    if state.failed:
        row["status"] = f"{len(state.failed)} run(s) failed: {error_line(state.failed[0])}"
    return row


def error_line(row: dict) -> str:
    """A failed run's one-line error (the store's message, else the traceback's last line)."""
    if row.get("message"):
        return row["message"]
    lines = (row.get("error") or "").strip().splitlines()
    return lines[-1] if lines else "no message"


def _cell(row: dict | None) -> str:
    if row is None:
        return ""
    if row["mean"] is None:
        return f"({row['status']})"
    spread = f" ± {100 * row['stderr']:.2f}" if row["seeds_done"] > 1 else ""  # no standard error from one seed
    text = f"{100 * row['mean']:.2f}{spread} ({row['seeds_done']})"
    return text if row["seeds_done"] == row["seeds"] else text + f" of {row['seeds']}"


def markdown(rows: list[dict]) -> str:
    """Table 1's layout (methods × sweeps, mean ± s.e. in %, seeds in brackets) and the chosen c per cell."""
    sweeps = list(dict.fromkeys(r["sweep"] for r in rows))
    labels = list(dict.fromkeys(r["label"] for r in rows))
    cells = {(r["sweep"], r["label"]): r for r in rows}
    benchmark = {r["sweep"]: r["benchmark"] for r in rows}
    header = "| method | " + " | ".join(f"{s} ({benchmark[s]})" for s in sweeps) + " |"
    lines = ["Average accuracy (%), mean ± standard error over seeds (number of seeds)", "", header,
             "| --- |" + " --- |" * len(sweeps)]
    lines += [f"| {label} | " + " | ".join(_cell(cells.get((s, label))) for s in sweeps) + " |" for label in labels]
    lines += ["", "Chosen hyperparameters (search score on the search split; * = best c on the grid's edge after "
              "the last allowed extension)", "", header, "| --- |" + " --- |" * len(sweeps)]
    for label in labels:
        out = []
        for s in sweeps:
            r = cells.get((s, label))
            if r is None or r["c"] is None:
                out.append("" if r is None else r["status"])
            else:
                edge = "*" if r["best_c_at_grid_edge"] else ""
                score = r["search_score"]
                shown = "diverged" if score is None or not math.isfinite(score) else f"{100 * score:.2f}"
                grid = "".join(f", {k} {v:g}" if isinstance(v, float) else f", {k} {v}"
                               for k, v in (r["grid"] or {}).items())
                out.append(f"c = {r['c']:g}{edge}, re-init {'on' if r['reinit'] else 'off'}{grid} ({shown})")
        lines.append(f"| {label} | " + " | ".join(out) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per (sweep, method)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows(rows)


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text.replace("√", "sqrt-")).strip("-") or "x"


def plot_search(spec: SweepSpec, states: dict[str, EntryState], stem: Path) -> list[Path]:
    """The grid search: search score against c (log scale) per method and search line (re-init, grid values)."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    colours = plt.get_cmap("tab20").colors
    flat, shown = [], []  # c = 0 only (finetune): a horizontal line, or a legend note if far below the curves
    styles = ["-", "--", "-.", ":"]
    for index, (label, state) in enumerate(states.items()):
        for number, (line, curve) in enumerate(state.curves.items()):
            points = sorted((c, s) for c, s in curve.items() if c > 0 and s is not None and math.isfinite(s))
            if not points and curve.get(0.0) is not None and math.isfinite(curve[0.0]):
                flat.append((label, 100 * curve[0.0]))
            if points:
                cs, scores = zip(*points)
                shown += [100 * s for s in scores]
                ax.plot(cs, [100 * s for s in scores], marker="o", linestyle=styles[number % len(styles)],
                        color=colours[index % len(colours)], label=f"{label} ({line.describe()})")
    low = min(shown) - 1 if shown else None
    for label, value in flat:
        if low is None or value >= low:
            ax.axhline(value, color="grey", linestyle=":", label=f"{label} (c = 0)")
        else:
            ax.plot([], [], " ", label=f"{label} (c = 0): {value:.1f}%, below the axis")
    if shown:
        ax.set_ylim(low, max(shown) + 0.5)
    ax.set_xscale("log")
    ax.set_xlabel("regularisation strength c")
    ax.set_ylabel(f"{spec.metric.replace('_', ' ')} on {spec.search_evaluate_on} (%)")
    ax.set_title(f"Grid search of {spec.name} ({spec.benchmark}): mean over {spec.search_seeds} seed(s)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    return save(fig, stem)


def plot_matrix(spec: SweepSpec, state: EntryState, stem: Path) -> list[Path]:
    """Mean accuracy matrix A[k, j] over the final runs of the chosen configuration."""
    matrices = [np.asarray(r["result"]["accuracy_matrix"]) for r in state.final if r["status"] == "done"]
    mean = 100 * np.mean(matrices, axis=0)
    plt = pyplot()
    k = mean.shape[0]
    fig, ax = plt.subplots(figsize=(0.5 * k + 3, 0.45 * k + 2))
    image = ax.imshow(mean, vmin=0, vmax=100, cmap="viridis")
    for i in range(k):
        for j in range(k):
            ax.text(j, i, f"{mean[i, j]:.0f}", ha="center", va="center", fontsize=6,
                    color="white" if mean[i, j] < 60 else "black")
    ax.set_xticks(range(k), [str(j + 1) for j in range(k)])
    ax.set_yticks(range(k), [str(i + 1) for i in range(k)])
    ax.set_xlabel("evaluated on task")
    ax.set_ylabel("after training task")
    c, line = state.selected
    ax.set_title(f"{spec.name}: {state.entry.label}, c = {c:g}, {line.describe()} — "
                 f"accuracy (%), mean of {len(matrices)} seed(s) on {spec.final_evaluate_on}", fontsize=8)
    fig.colorbar(image, ax=ax, label="accuracy (%)")
    return save(fig, stem)


def write_report(store: Store, out_dir: str | Path) -> dict:
    """table.md, table.csv, runs.json (every run of the store as plain data), one search figure per sweep
    and one accuracy-matrix heatmap per method with finished final runs."""
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    states = sweep_states(store)
    rows = [entry_row(spec, state) for spec, entries in states.values() for state in entries.values()]
    text = markdown(rows)
    (out / "table.md").write_text(text)
    write_json(out / "runs.json", {"store": str(store.path), "sweeps": store.sweeps(), "runs": store.runs()})
    write_csv(rows, out / "table.csv")
    figures, used = [], set()
    for spec, entries in states.values():
        figures += plot_search(spec, entries, out / f"search-{_slug(spec.name)}")
        for state in entries.values():
            if any(r["status"] == "done" for r in state.final):
                name = f"matrix-{_slug(spec.name)}-{_slug(state.entry.label)}"
                name += f"-{len(used)}" if name in used else ""  # labels differing only in symbols (√Fisher, Fisher)
                used.add(name)
                figures += plot_matrix(spec, state, out / name)
    return {"rows": rows, "markdown": text, "figures": [str(p) for p in figures]}
