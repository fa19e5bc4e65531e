"""`clreg analyze measures|bias|noise`: one training run with a probe; JSON data, PNG/SVG figures, a summary."""
from __future__ import annotations

import json
from pathlib import Path
from typing import Sequence

import numpy as np

from clreg.train import metrics
from clreg.train.config import RunConfig
from clreg.core.device import describe
from clreg.train.callbacks import Callback
from clreg.train.checkpoint import CheckpointError
from clreg.core.records import provenance, write_json
from clreg.train.loop import Trainer, load_benchmark
from clreg.analysis import plots
from clreg.analysis.bias import BiasProbe
from clreg.analysis.measures import PAIRS, MeasuresProbe
from clreg.analysis.noise import NoiseProbe
from clreg.analysis.probe import Probes

KINDS = ("measures", "bias", "noise")
OPTIONS_ADDED = {"record_every": 1}  # options added after records were committed: the value those records imply


def analyze(kind: str, config: RunConfig, out_dir: str | Path, every: int = 10, large_samples: int | None = None,
            scatter_points: int = 100_000, progress: bool = True, bench=None,
            pairs: tuple[tuple[str, str], ...] = PAIRS, checkpoint: str | Path | None = None,
            resume: bool = False, extend: bool = False, record_every: int = 1) -> dict:
    """Train `config` with the analysis `kind` attached; write `<kind>.json`, figures and `summary.md` into
    `out_dir`; return the JSON data. `checkpoint`/`resume`/`extend`/`record_every`: as `analyze_together`."""
    return analyze_together((kind,), config, {kind: out_dir}, every, large_samples, scatter_points, progress,
                            bench, pairs, checkpoint, resume, extend, record_every)[kind]


def analyze_together(kinds: Sequence[str], config: RunConfig, out_dirs: dict[str, str | Path], every: int = 10,
                     large_samples: int | None = None, scatter_points: int = 100_000, progress: bool = True,
                     bench=None, pairs: tuple[tuple[str, str], ...] = PAIRS, checkpoint: str | Path | None = None,
                     resume: bool = False, extend: bool = False, record_every: int = 1) -> dict[str, dict]:
    """Several analyses on one training run (one trajectory, as the paper computes them): each kind writes its
    JSON, figures and summary into `out_dirs[kind]`; returns each kind's data. The probes share the run's
    extra passes (g_t, g'_t, and the training-set gradient every `every` steps).

    Each JSON is written after every task too (`"complete": false`, the tasks so far), so that no finished
    task's records are lost. `checkpoint`/`resume`: as `Trainer.run`, the records included. `extend`: where
    `out_dirs` hold such partial JSON of this configuration (from a machine whose checkpoint is gone), their
    tasks are trained again without probes (the same trajectory, at the cost of plain training) and only the
    later tasks are recorded, appended to theirs. A checkpoint to resume from wins over the JSON: it holds
    the records, and the earlier parts the run extended, itself. `record_every`: bias keeps its running sums
    every this many steps (and at each epoch's end), exact at those steps; 1 keeps every step."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"analyses must be distinct names from {', '.join(KINDS)}; got {', '.join(kinds) or 'none'}")
    makers = {"measures": lambda: MeasuresProbe(config.damping, config.samples, large_samples, scatter_points,
                                                config.seed, pairs),
              "bias": lambda: BiasProbe(every, record_every), "noise": lambda: NoiseProbe(every)}
    probes = {kind: makers[kind]() for kind in kinds}
    options = {"every": every, "large_samples": large_samples, "scatter_points": scatter_points,
               "pairs": [list(pair) for pair in pairs], "record_every": record_every}
    out = {kind: Path(out_dirs[kind]) for kind in kinds}
    resuming = resume and checkpoint is not None and Path(checkpoint).exists()
    # a checkpoint holds the records, and the earlier parts it extended, itself: the JSON is only read without one
    earlier = earlier_parts(kinds, config, out, options) if extend and not resuming else {}
    if earlier and all(data["complete"] for data in earlier.values()):
        return earlier  # nothing left to record
    for kind, data in earlier.items():
        probes[kind].load_records(data)
    bench = bench or load_benchmark(config)
    first_task = next(iter(earlier.values()))["tasks_done"] if earlier else 0
    watcher = Probes(list(probes.values()), first_task)
    writer = _Writer(probes, watcher, config, out, options, list(kinds), earlier)
    trainer = Trainer(config, bench, progress, [watcher, writer])
    writer.trainer = trainer
    accuracy = trainer.run(checkpoint, resume)
    return {kind: writer.write(kind, accuracy, final=True) for kind in kinds}


def earlier_parts(kinds: Sequence[str], config: RunConfig, out: dict[str, Path], options: dict) -> dict[str, dict]:
    """The JSON each analysis already has in its directory (none: {}), checked to be of this configuration
    and these options, and all with the same tasks recorded."""
    found = {kind: json.loads((out[kind] / f"{kind}.json").read_text()) for kind in kinds
             if (out[kind] / f"{kind}.json").exists()}
    if not found:
        return {}
    missing = [kind for kind in kinds if kind not in found]
    if missing:
        raise ValueError(f"extend: {', '.join(found)} have earlier records, {', '.join(missing)} none; extend "
                         "analyses that were recorded together, or start those afresh in another directory")
    for kind, data in found.items():  # the settings that make the numbers; the data's path or the device may differ
        theirs = RunConfig.from_dict(data["config"]).canonical() if "config" in data else {}
        if theirs != config.canonical():
            raise ValueError(f"extend: {out[kind] / kind}.json was recorded with another configuration: "
                             f"{_differences(theirs, config.canonical())}")
        theirs = {**OPTIONS_ADDED, **data.get("options", options)}
        if theirs != options:
            raise ValueError(f"extend: {out[kind] / kind}.json was recorded with other options: "
                             f"{_differences(theirs, options)}")
    done = {kind: data.get("tasks_done", len(data["accuracy_matrix"])) for kind, data in found.items()}
    if len(set(done.values())) > 1:
        raise ValueError("extend: the earlier records end at different tasks ("
                         + ", ".join(f"{kind} after {n}" for kind, n in done.items()) + "): extend them one at a time")
    for kind, data in found.items():
        data.setdefault("tasks_done", done[kind])
        data.setdefault("complete", done[kind] == len(data["accuracy_matrix"][0]))
    return found


def _differences(theirs: dict, ours: dict) -> str:
    keys = sorted(k for k in {*theirs, *ours} if theirs.get(k) != ours.get(k))
    return ", ".join(f"{k} {theirs.get(k)!r} there, {ours.get(k)!r} here" for k in keys)


class _Writer(Callback):
    """Writes each analysis's JSON, figures and summary after every task (the records so far) and at the end."""

    def __init__(self, probes: dict, watcher: Probes, config: RunConfig, out: dict[str, Path], options: dict,
                 kinds: list[str], earlier: dict[str, dict]):
        self.probes, self.watcher, self.config, self.out = probes, watcher, config, out
        self.options, self.kinds, self.earlier = options, kinds, earlier
        self.trainer: Trainer | None = None
        self.drawn: dict[str, list[str]] = {}  # each kind's figures of the last write

    def state_dict(self) -> dict:  # noqa: D102
        kept = ("parts", "figures", "tasks_done", "accuracy_matrix")  # what later writes take from earlier parts
        return {"earlier": {kind: {k: data[k] for k in kept if k in data} for kind, data in self.earlier.items()},
                "drawn": self.drawn, "options": self.options}

    def load_state_dict(self, state: dict) -> None:  # noqa: D102
        theirs = {**OPTIONS_ADDED, **state.get("options", self.options)}  # older checkpoints lack them
        if theirs != self.options:  # the records so far were taken with those: the rest must be too
            raise CheckpointError(f"the checkpoint's records were taken with other options: "
                                  f"{_differences(theirs, self.options)}; resume with the same ones")
        self.earlier, self.drawn = state["earlier"], state["drawn"]

    def on_evaluation(self, trainer: Trainer, task: int, accuracy: list[float]) -> None:  # noqa: D102
        if task >= self.watcher.first_task and task + 1 < trainer.bench.num_tasks:
            for kind in self.kinds:
                self.write(kind, trainer.accuracy[:task + 1], final=False)

    def write(self, kind: str, accuracy: np.ndarray, final: bool) -> dict:
        """Write `kind`'s JSON, figures and summary.md into its directory (`final`: the whole run); return the
        data."""
        trainer, probe, out = self.trainer, self.probes[kind], self.out[kind]
        out.mkdir(parents=True, exist_ok=True)
        done = len(accuracy)  # the rows of the tasks trained so far
        made_by = provenance()  # this process's: the JSON's own, and its part's
        part = {"first_task": self.watcher.first_task, "tasks_done": done, "wall_seconds": self.watcher.elapsed(),
                "device": describe(trainer.device), **made_by}
        parts = [*self.earlier.get(kind, {}).get("parts", []), part]
        data = {"analysis": kind, "config": self.config.to_dict(), "options": self.options,
                "device": describe(trainer.device), "benchmark": trainer.bench.describe(),
                "tasks_done": done, "complete": final, "accuracy_matrix": accuracy.tolist(),
                **(metrics.summary(accuracy) if final else {}),
                "wall_seconds": sum(p["wall_seconds"] for p in parts), "timing": trainer.timing,
                "analyses_on_this_run": self.kinds, "parts": parts, **made_by, **self._replay(kind, accuracy)}
        RECORDS[kind](probe, data)
        earlier = self.earlier.get(kind, {}).get("figures", [])  # an earlier part's figures stay beside ours
        ours = [str(f.relative_to(out)) for f in FIGURES[kind](probe, data, out)]
        for stale in set(self.drawn.get(kind, [])) - set(ours) - set(earlier):  # the previous write's latest task
            (out / stale).unlink(missing_ok=True)
        self.drawn[kind] = ours
        data["figures"] = [*(f for f in earlier if f not in ours), *ours]
        (out / "summary.md").write_text(summary(data))
        write_json(out / f"{kind}.json", data)
        return data

    def _replay(self, kind: str, accuracy: np.ndarray) -> dict:
        """With earlier records: how closely the replayed tasks' accuracies match those recorded with them."""
        earlier = self.earlier.get(kind)
        if not earlier:
            return {}
        n = earlier["tasks_done"]
        ours, theirs = np.asarray(accuracy[:n]), np.asarray(earlier["accuracy_matrix"][:n])
        return {"replayed_tasks": n, "replay_max_accuracy_difference": float(np.abs(ours - theirs).max())}


def _first_and_last(items: list) -> list:
    return items[:1] + items[-1:] if len(items) > 1 else items


def _measures_records(probe: MeasuresProbe, data: dict) -> None:
    data["tasks"] = probe.tasks


def _bias_records(probe: BiasProbe, data: dict) -> None:
    data["tasks"] = probe.tasks
    data["ratio_si_to_siu"] = [t["ratio_si_to_siu"] for t in probe.tasks]
    data["every"] = probe.full_gradient_every


def _noise_records(probe: NoiseProbe, data: dict) -> None:
    data["records"], data["summary"] = probe.records, probe.summary()


def _measures(probe: MeasuresProbe, data: dict, out: Path) -> list[Path]:
    figures = []
    recorded_here = [record for record in probe.tasks if record["task"] in probe.scatter]  # not earlier parts'
    for record in _first_and_last(recorded_here):
        t, points = record["task"] + 1, probe.scatter[record["task"]]
        plotted = {name for pair in probe.pairs for name in pair}
        np.savez_compressed(out / f"scatter-task{t}.npz", **{k: v.astype(np.float32) for k, v in points.items()
                                                             if k in plotted})
        names = record["measures"]
        matrix = np.array([[np.nan if record["correlation"][a][b] is None else record["correlation"][a][b]
                            for b in names] for a in names])
        figures += plots.correlation_heatmap(matrix, names, f"Correlation of importance measures after task {t} "
                                             f"({data['benchmark']['name']}, trained with {data['config']['method']})",
                                             out / f"correlation-task{t}")
        stems = plots.file_names([(f"scatter-task{t}", a, "vs", b) for a, b in probe.pairs])
        for a, b in probe.pairs:
            figures += plots.scatter(points[a], points[b], (a, b), record["slope_through_origin"][f"{a} vs {b}"],
                                     record["pairs"][f"{a} vs {b}"], f"{a} vs {b} after task {t}",
                                     out / stems[f"scatter-task{t}", a, "vs", b])
    return figures


def _bias(probe: BiasProbe, data: dict, out: Path) -> list[Path]:
    return [f for task in _first_and_last(probe.tasks)
            for f in plots.bias_curves(task, probe.full_gradient_every, out / f"bias-task{task['task'] + 1}")]


def _noise(probe: NoiseProbe, data: dict, out: Path) -> list[Path]:
    return plots.noise_plot(probe.records, data["summary"], out / "noise")


RECORDS = {"measures": _measures_records, "bias": _bias_records, "noise": _noise_records}
FIGURES = {"measures": _measures, "bias": _bias, "noise": _noise}


def summary(data: dict) -> str:
    """The key numbers as markdown."""
    cfg = data["config"]
    lines = [f"# clreg analyze {data['analysis']}", "",
             f"{data['benchmark']['name']}, {cfg['network']} {cfg['hidden']}, method {cfg['method']} c={cfg['c']}, "
             f"re-init {'on' if cfg['reinit'] else 'off'}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
             f"seed {cfg['seed']}; " + (f"average accuracy {100 * data['average_accuracy']:.2f}%; "
                                         if data.get("complete", True) else
                                         f"unfinished: {data['tasks_done']} of {len(data['accuracy_matrix'][0])} "
                                         "tasks recorded; ") + f"{data['wall_seconds']:.0f} s.", ""]
    if data["analysis"] == "measures":
        pairs = list(data["tasks"][0]["pairs"])
        extra = [k for k in data["tasks"][0]["measures"] if "@" in k]
        lines += ["Pearson r over all shared parameters, per task:", "",
                  "| task | " + " | ".join(pairs + [f"{k.split('@')[0]} vs {k}" for k in extra]) + " |",
                  "| --- |" + " --- |" * (len(pairs) + len(extra))]
        for t in data["tasks"]:
            cells = [t["pairs"][p] for p in pairs] + [t["correlation"][k.split("@")[0]][k] for k in extra]
            lines.append(f"| {t['task'] + 1} | " + " | ".join("–" if c is None else f"{c:.3f}" for c in cells) + " |")
    elif data["analysis"] == "bias":
        lines += [f"Path integrals with the full gradient every {data['every']} steps: start-point sum (as SI) and "
                  "trapezoid rule.", "",
                  "| task | Σ SI | Σ SIU | Σ SIB | Σ SI / Σ SIU | full gradient, start points | full gradient, trapezoid "
                  "| actual loss decrease |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
        for t in data["tasks"]:
            s = t["totals"]
            ratio = "–" if t["ratio_si_to_siu"] is None else f"{t['ratio_si_to_siu']:.2f}"
            lines.append(f"| {t['task'] + 1} | {s['si']:.4g} | {s['siu']:.4g} | {s['sib']:.4g} | {ratio} | "
                         f"{t['full_gradient_path']:.4g} | {t.get('full_gradient_path_trapezoid', float('nan')):.4g} | "
                         f"{t['loss_decrease']:.4g} |")
    else:
        s = data["summary"]
        lines += [f"{s['steps_recorded']} steps recorded; median ‖g_batch − g_full‖² / ‖g_full‖² = "
                  f"{s['median_ratio']:.3g}.", "", "| x | fraction of steps with ratio > x |", "| --- | --- |"]
        lines += [f"| {x} | {v:.3f} |" for x, v in s["fraction_above"].items()]
    lines += ["", "Figures: " + ", ".join(f for f in data["figures"] if f.endswith(".png")), ""]
    return "\n".join(lines)
