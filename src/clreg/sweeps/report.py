"""`clreg report`: a store's sweeps as the paper's table 1 (methods × benchmarks, mean ± s.e. over
seeds) in markdown and CSV, the grid search's curves (search metric against c) and the mean accuracy
matrix of every chosen configuration as a heatmap."""
from __future__ import annotations

import csv
import math
from pathlib import Path

import numpy as np

from clreg.analysis.plots import file_names, log_ticks, pyplot, save, series_style
from clreg.train.metrics import mean_and_stderr
from clreg.core.records import write_json
from clreg.sweeps.store import Store
from clreg.sweeps.plan import EntryState, plan_entry, stored_lookup
from clreg.sweeps.spec import PAPER_MARGIN, SweepSpec

COLUMNS = ("sweep", "benchmark", "label", "method", "c", "reinit", "grid", "seeds_done", "seeds", "mean", "stderr",
           "mean_forgetting", "search_score", "best_c_at_grid_edge", "status", "machine", "did_not_learn",
           "paper", "paper_difference", "target_low", "target_high", "in_target")
UNKNOWN = "unknown"  # a machine detail a run did not record (results imported from an earlier clreg)
DID_NOT_LEARN = "†"
ROUNDING = 1e-9  # points: a mean this close to a target's bound is on it (floating-point sums of the runs' accuracies)


def sweep_states(store: Store) -> dict[str, tuple[SweepSpec, dict[str, EntryState]]]:
    """Every sweep in the store with the state of each of its methods (finished runs only; the runs an
    interrupted sweep left are listed in each state's `interrupted`)."""
    out = {}
    for name, data in store.sweeps().items():
        spec = SweepSpec.from_dict(data)
        states = {}
        for entry in spec.entries:
            interrupted: list[dict] = []
            states[entry.label] = plan_entry(spec, entry, stored_lookup(store, interrupted), [])
            states[entry.label].interrupted = list({r["key"]: r for r in interrupted}.values())
        out[name] = (spec, states)
    return out


def machine_text(row: dict) -> str:
    """What a run's numbers depend on beyond its config: 'AMD EPYC, AVX512, 1 thread(s)' ('unknown' for what
    it did not record). The store key leaves these out, so runs of one config on other machines share a row."""
    machine = row.get("machine") if isinstance(row.get("machine"), dict) else {}
    threads = machine.get("torch_threads")
    return (f"{machine.get('cpu_model') or UNKNOWN}, {machine.get('cpu_capability') or UNKNOWN}, "
            f"{threads if threads is not None else UNKNOWN} thread(s)")


def entry_row(spec: SweepSpec, state: EntryState) -> dict:
    """One table row: the chosen (c, re-init), its final runs' mean ± s.e. of the metric, the status."""
    finals = [r for r in state.final if r["status"] == "done"]  # the finished final runs, filtered once
    done = [r["result"] for r in finals]
    row = {"sweep": spec.name, "benchmark": spec.benchmark, "label": state.entry.label, "method": state.entry.method,
           "c": None, "reinit": None, "grid": None, "seeds_done": len(done), "seeds": len(spec.seeds), "mean": None, "stderr": None,
           "mean_forgetting": None, "search_score": None, "best_c_at_grid_edge": None,
           "status": "complete" if state.complete else ("final runs" if state.search_done else "searching")}
    if state.selected is not None:
        c, line = state.selected
        row.update(c=c, reinit=line.reinit, grid=dict(line.point) or None, search_score=state.curves[line][c],
                   best_c_at_grid_edge=state.at_edge.get(line, False))
    row["per_seed"] = {_seed(r): r["result"][spec.metric] for r in finals}
    if done:
        row["mean"], row["stderr"] = mean_and_stderr([r[spec.metric] for r in done])
        row["mean_forgetting"] = float(np.mean([r["mean_forgetting"] for r in done]))
    diverged = sum(r["status"] == "diverged" for r in state.final)
    if diverged:
        row["status"] += f", {diverged} final run(s) diverged"
    if state.interrupted:
        row["status"] += f", {len(state.interrupted)} run(s) interrupted (the next sweep runs them)"
    if state.failed:
        row["status"] = f"{len(state.failed)} run(s) failed: {error_line(state.failed[0])}"
    row["interrupted"] = len(state.interrupted)
    row["machine"] = "; ".join(dict.fromkeys(machine_text(r) for r in finals)) or None
    row["did_not_learn"] = sum(r["result"].get("did_not_learn") is True for r in finals)
    chances = {r["result"]["chance"] for r in finals if r["result"].get("did_not_learn") is True
               and r["result"].get("chance") is not None}
    row["chance"] = max(chances) if chances else None
    row.update(against_paper(state.entry.paper, spec.paper.get("margin", PAPER_MARGIN), row["mean"]),
               paper_source=spec.paper)
    return row


def _seed(row: dict) -> int:
    """A run row's seed: its config is a dict as a store keeps it, or a RunConfig as a plan made it."""
    config = row["config"]
    return config["seed"] if isinstance(config, dict) else config.seed


def against_paper(figure: dict | None, margin: float, mean: float | None) -> dict:
    """An entry's published figure (clreg.sweeps.spec.PAPER_FORMS, in %) against its final runs' mean (a
    fraction): the figure as text, the target (the published mean ± (s.e. + margin), or the published bound,
    which is strict), ours − the published value, and whether ours is in the target ("yes"/"no"; None where
    the figure gives no target or no run has finished)."""
    out = {"paper": None, "target_low": None, "target_high": None, "in_target": None, "paper_difference": None,
           "paper_se": figure.get("se") if figure else None}
    if not figure:
        return out
    if "mean" in figure:
        spread = figure["se"] + margin  # rounded: 97.2 - 0.4 is 96.80000000000001
        out.update(paper=f"{figure['mean']:g} ± {figure['se']:g}", target_low=round(figure["mean"] - spread, 9),
                   target_high=round(figure["mean"] + spread, 9))
    elif "about" in figure:
        out["paper"] = f"about {figure['about']:g}"
    elif "below" in figure:
        out.update(paper=f"below {figure['below']:g}", target_high=figure["below"])
    else:
        out.update(paper=f"above {figure['above']:g}", target_low=figure["above"])
    if mean is None:
        return out
    ours = 100 * mean
    if "mean" in figure or "about" in figure:
        out["paper_difference"] = ours - figure.get("mean", figure.get("about"))
    if "mean" in figure:  # within rounding of the bound counts as on it: accuracies are counts over test sizes
        inside = out["target_low"] - ROUNDING <= ours <= out["target_high"] + ROUNDING
    elif "below" in figure or "above" in figure:
        inside = ours < figure["below"] - ROUNDING if "below" in figure else ours > figure["above"] + ROUNDING
    else:
        return out
    out["in_target"] = "yes" if inside else "no"
    return out


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
    text += "" if row["seeds_done"] == row["seeds"] else f" of {row['seeds']}"
    return text + (f" {DID_NOT_LEARN}" if row.get("did_not_learn") else "")


def notes(rows: list[dict]) -> list[str]:
    """The lines under the table: runs that did not learn, interrupted runs, and rows measured on different
    machines or thread counts (which the store key does not tell apart)."""
    several = len({r["sweep"] for r in rows}) > 1
    name = {id(r): f"{r['label']} ({r['sweep']})" if several else r["label"] for r in rows}
    out = []
    flagged = [r for r in rows if r.get("did_not_learn")]
    if flagged:
        out.append(f"{DID_NOT_LEARN} did not learn (ended below chance plus a margin): " + "; ".join(
            f"{name[id(r)]}: {r['did_not_learn']} of {r['seeds_done']} seed(s)"
            + (f", chance {100 * r['chance']:.2f}%" if r.get("chance") is not None else "") for r in flagged))
    stopped = [r for r in rows if r.get("interrupted")]
    if stopped:
        out.append("Interrupted runs (not failed, not done; the next `clreg sweep` runs them): " + "; ".join(
            f"{name[id(r)]}: {r['interrupted']}" for r in stopped))
    machines: dict[str, list[str]] = {}
    for r in rows:
        for text in (r.get("machine") or "").split("; "):
            if text:
                machines.setdefault(text, []).append(name[id(r)])
    if len(machines) > 1:
        out.append("Note: these numbers come from different machines or thread counts, whose rounding differs "
                   "(they are not part of a run's key in the store, so such runs are not kept apart): " + "; ".join(
                       f"{text}: {', '.join(labels)}" for text, labels in machines.items()))
    return out


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
    lines += [line for note in notes(rows) for line in ("", note)]
    lines += comparison(rows)
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


def comparison(rows: list[dict]) -> list[str]:
    """Per sweep with published figures: ours, the paper's, the difference, the target and whether ours is in
    it (a row with seeds still to run says how many it has)."""
    lines = []
    for sweep in dict.fromkeys(r["sweep"] for r in rows if r.get("paper")):
        paper = next(r["paper_source"] for r in rows if r["sweep"] == sweep)
        lines += ["", f"{sweep} against {paper['source']}: the target is the published mean ± (s.e. + "
                      f"{paper['margin']:g}), or the published bound; z is ours − paper over √(our s.e.² + the "
                      "paper's s.e.²)", "",
                  "| method | per seed | ours | paper | ours − paper | z | target | in target |",
                  "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for r in (r for r in rows if r["sweep"] == sweep and r.get("paper")):
            difference = "" if r["paper_difference"] is None else _signed(r["paper_difference"], 2)
            spread = math.hypot(100 * r["stderr"], r["paper_se"]) if r["seeds_done"] > 1 and r["paper_se"] else None
            z = "" if not spread or r["paper_difference"] is None else _signed(r["paper_difference"] / spread, 1)
            low, high = r["target_low"], r["target_high"]
            target = (f"{_percent(low)}–{_percent(high)}" if low is not None and high is not None else
                      f"below {_percent(high)}" if high is not None else f"above {_percent(low)}" if low is not None
                      else "none (no published s.e.)")
            verdict = r["in_target"] or ""
            if verdict and r["seeds_done"] < r["seeds"]:
                verdict += f" ({r['seeds_done']} of {r['seeds']} seeds)"
            seeds = ", ".join(f"{100 * value:.2f} ({seed})" for seed, value in sorted(r["per_seed"].items()))
            lines.append(f"| {r['label']} | {seeds} | {_cell(r)} | {r['paper']} | {difference} | {z} | {target} | {verdict} |")
    return lines


def _signed(value: float, digits: int) -> str:
    """+0.16, -0.19; a value that rounds to zero is 0.00 (not -0.00)."""
    text = f"{value:+.{digits}f}"
    return text[1:] if float(text) == 0 else text


def _percent(value: float) -> str:
    """96.8 → '96.8', 97.0 → '97.0', 96.75 → '96.75': at least one decimal, at most two."""
    return f"{value:.2f}".rstrip("0").rstrip(".") if value != round(value) else f"{value:.1f}"


def write_csv(rows: list[dict], path: Path) -> None:
    """One line per (sweep, method)."""
    with open(path, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(rows)


def plot_search(spec: SweepSpec, states: dict[str, EntryState], stem: Path) -> list[Path]:
    """`search_figure` saved as `stem`.png and .svg."""
    return save(search_figure(spec, states), stem)


def search_figure(spec: SweepSpec, states: dict[str, EntryState]):
    """The grid search: search score against c (log scale) per method (colour and marker) and search line
    (line style: re-init, grid values), each method's chosen c marked by a vertical line and its value."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 5))
    flat, shown = [], []  # c = 0 only (finetune): a horizontal line, or a legend note if far below the curves
    for index, (label, state) in enumerate(states.items()):
        for number, (line, curve) in enumerate(state.curves.items()):
            points = sorted((c, s) for c, s in curve.items() if c > 0 and s is not None and math.isfinite(s))
            if not points and curve.get(0.0) is not None and math.isfinite(curve[0.0]):
                flat.append((label, 100 * curve[0.0]))
            if points:
                cs, scores = zip(*points)
                shown += [100 * s for s in scores]
                ax.plot(cs, [100 * s for s in scores], **series_style(index, number), label=f"{label} ({line.describe()})")
    low = min(shown) - 1 if shown else None
    for label, value in flat:
        if low is None or value >= low:
            ax.axhline(value, color="grey", linestyle=":", label=f"{label} (c = 0)")
        else:
            ax.plot([], [], " ", label=f"{label} (c = 0): {value:.1f}%, below the axis")
    if shown:
        ax.set_ylim(low, max(shown) + 0.5)
    ax.set_xscale("log")
    _mark_chosen(ax, states)
    ax.set_xlabel("regularisation strength c")
    ax.set_ylabel(f"{spec.metric.replace('_', ' ')} on {spec.search_evaluate_on} (%)")
    ax.set_title(f"Grid search of {spec.name} ({spec.benchmark}): mean over {spec.search_seeds} seed(s)", fontsize=9)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1))
    log_ticks(ax, [c for state in states.values() for curve in state.curves.values() for c in curve])
    return fig


def _mark_chosen(ax, states: dict[str, EntryState]) -> None:
    """Each method's chosen c (> 0): a vertical line in its colour and 'label: chosen c = …' at the top of the
    axes, on the line's side towards the middle."""
    low, high = np.log(ax.get_xlim())
    for index, (label, state) in enumerate(states.items()):
        if state.selected is None or not state.selected[0] > 0:
            continue
        c = state.selected[0]
        colour = series_style(index)["color"]
        ax.axvline(c, color=colour, linestyle=(0, (1, 1.5)), linewidth=1.2)
        right = np.log(c) > (low + high) / 2
        ax.annotate(f"{label}: chosen c = {c:g}", xy=(c, 1), xycoords=("data", "axes fraction"),
                    xytext=(-3 if right else 3, -4 - 10 * index), textcoords="offset points", va="top",
                    ha="right" if right else "left", fontsize=7, color=colour)


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
    names = file_names([("search", spec.name) for spec, _ in states.values()]
                       + [("matrix", spec.name, label) for spec, entries in states.values() for label in entries])
    figures = []
    for spec, entries in states.values():
        figures += plot_search(spec, entries, out / names["search", spec.name])
        for label, state in entries.items():
            if any(r["status"] == "done" for r in state.final):
                figures += plot_matrix(spec, state, out / names["matrix", spec.name, label])
    written = sorted({str(p) for p in figures if Path(p).is_file()})  # distinct files: a name written twice counts once
    return {"rows": rows, "markdown": text, "figures": written}
