"""`clreg analyze measures|bias|noise`: one training run with a probe; JSON data, PNG/SVG figures, a summary."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from .. import metrics
from ..config import RunConfig
from ..device import describe
from ..results import write_json
from ..train import Trainer, load_benchmark
from . import plots
from .bias import BiasProbe
from .measures import PAIRS, MeasuresProbe
from .noise import NoiseProbe
from .probe import Probes

KINDS = ("measures", "bias", "noise")


def analyze(kind: str, config: RunConfig, out_dir: str | Path, every: int = 10, large_samples: int | None = None,
            scatter_points: int = 100_000, progress: bool = True, bench=None,
            pairs: tuple[tuple[str, str], ...] = PAIRS, checkpoint: str | Path | None = None,
            resume: bool = False) -> dict:
    """Train `config` with the analysis `kind` attached; write `<kind>.json`, figures and `summary.md` into
    `out_dir`; return the JSON data. `checkpoint`/`resume`: as `Trainer.run`, the probe's records included."""
    return analyze_together((kind,), config, {kind: out_dir}, every, large_samples, scatter_points, progress,
                            bench, pairs, checkpoint, resume)[kind]


def analyze_together(kinds: Sequence[str], config: RunConfig, out_dirs: dict[str, str | Path], every: int = 10,
                     large_samples: int | None = None, scatter_points: int = 100_000, progress: bool = True,
                     bench=None, pairs: tuple[tuple[str, str], ...] = PAIRS, checkpoint: str | Path | None = None,
                     resume: bool = False) -> dict[str, dict]:
    """Several analyses on one training run (one trajectory, as the paper computes them): each kind writes its
    JSON, figures and summary into `out_dirs[kind]`; returns each kind's data. The probes share the run's
    extra passes (g_t, g'_t, and the training-set gradient every `every` steps)."""
    unknown = [k for k in kinds if k not in KINDS]
    if unknown or not kinds or len(set(kinds)) != len(kinds):
        raise ValueError(f"analyses must be distinct names from {', '.join(KINDS)}; got {', '.join(kinds) or 'none'}")
    makers = {"measures": lambda: MeasuresProbe(config.damping, config.samples, large_samples, scatter_points,
                                                config.seed, pairs),
              "bias": lambda: BiasProbe(every), "noise": lambda: NoiseProbe(every)}
    probes = {kind: makers[kind]() for kind in kinds}
    bench = bench or load_benchmark(config)
    watcher = Probes(list(probes.values()))
    trainer = Trainer(config, bench, progress, [watcher])
    accuracy = trainer.run(checkpoint, resume)
    shared = {"config": config.to_dict(), "device": describe(trainer.device), "benchmark": bench.describe(),
              "accuracy_matrix": accuracy.tolist(),
              **metrics.summary(accuracy), "wall_seconds": watcher.elapsed(), "timing": trainer.timing,
              "analyses_on_this_run": list(kinds)}
    results = {}
    for kind, probe in probes.items():
        out = Path(out_dirs[kind])
        out.mkdir(parents=True, exist_ok=True)
        data = {"analysis": kind, **shared}
        figures = {"measures": _measures, "bias": _bias, "noise": _noise}[kind](probe, data, out, every)
        data["figures"] = [str(f.relative_to(out)) for f in figures]
        write_json(out / f"{kind}.json", data)
        (out / "summary.md").write_text(summary(data))
        results[kind] = data
    return results


def _first_and_last(items: list) -> list:
    return items[:1] + items[-1:] if len(items) > 1 else items


def _measures(probe: MeasuresProbe, data: dict, out: Path, every: int) -> list[Path]:
    data["tasks"] = probe.tasks
    figures = []
    for record in _first_and_last(probe.tasks):
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
        for a, b in probe.pairs:
            figures += plots.scatter(points[a], points[b], (a, b), record["slope_through_origin"][f"{a} vs {b}"],
                                     record["pairs"][f"{a} vs {b}"], f"{a} vs {b} after task {t}",
                                     out / f"scatter-task{t}-{a}-vs-{b}")
    return figures


def _bias(probe: BiasProbe, data: dict, out: Path, every: int) -> list[Path]:
    data["tasks"] = probe.tasks
    data["ratio_si_to_siu"] = [t["ratio_si_to_siu"] for t in probe.tasks]
    data["every"] = every
    return [f for task in _first_and_last(probe.tasks)
            for f in plots.bias_curves(task, every, out / f"bias-task{task['task'] + 1}")]


def _noise(probe: NoiseProbe, data: dict, out: Path, every: int) -> list[Path]:
    data["records"], data["summary"] = probe.records, probe.summary()
    return plots.noise_plot(probe.records, data["summary"], out / "noise")


def summary(data: dict) -> str:
    """The key numbers as markdown."""
    cfg = data["config"]
    lines = [f"# clreg analyze {data['analysis']}", "",
             f"{data['benchmark']['name']}, {cfg['network']} {cfg['hidden']}, method {cfg['method']} c={cfg['c']}, "
             f"re-init {'on' if cfg['reinit'] else 'off'}, {cfg['epochs']} epochs, batch {cfg['batch_size']}, "
             f"seed {cfg['seed']}; average accuracy {100 * data['average_accuracy']:.2f}%; "
             f"{data['wall_seconds']:.0f} s.", ""]
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
