"""Figures of the analyses, each saved as PNG and SVG, titled and labelled for a reader without the code."""
from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections import Counter
from pathlib import Path
from typing import Iterable, Sequence

import numpy as np

from clreg.analysis.bias import recorded_steps
from clreg.core.extras import need


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend."""
    need("matplotlib", "the figures").use("Agg")  # files only, no display
    return need("matplotlib.pyplot", "the figures")


NAME_LIMIT = 120  # characters of a file-name stem before its hash: with hash and suffix well under 255 bytes


def file_names(keys: Iterable[tuple[str, ...]]) -> dict[tuple[str, ...], str]:
    """A file-name stem for each key (a tuple of labels, joined by '-'), safe on any file system and distinct
    from every other key's, case ignored (case-insensitive file systems). ASCII letters, digits, '.', '_'
    and '-' are kept, accents dropped and '√' spelt 'sqrt'; any other run of characters becomes '-', and
    leading or trailing '-' and '.' go (no '..', no hidden files). Where a part had to change or was empty,
    the stem was cut to NAME_LIMIT characters, or two keys' stems are equal case ignored, the stem ends in
    '-' and eight hex digits of a hash of the exact key, the same on every run and machine."""
    keys = list(dict.fromkeys(keys))
    readable = {key: "-".join(p for p in map(_readable, key) if p) for key in keys}
    shared = Counter(stem.casefold() for stem in readable.values())
    names = {}
    for key, stem in readable.items():
        changed = any(not part or _readable(part) != part for part in key) or len(stem) > NAME_LIMIT
        if changed or shared[stem.casefold()] > 1:
            stem = "-".join(p for p in (stem[:NAME_LIMIT].rstrip("-."), _digest(key)) if p)
        names[key] = stem
    if len({name.casefold() for name in names.values()}) < len(names):  # a hash equal to another label's text
        raise ValueError(f"labels {keys} give the same file name; rename one")
    return names


def file_name(*parts: str) -> str:
    """`file_names` of one key: the safe file-name stem of `parts` joined by '-'."""
    return file_names([parts])[parts]


def _readable(label: str) -> str:
    """`label`'s file-name-safe characters (see `file_names`)."""
    text = unicodedata.normalize("NFKD", label.replace("√", "sqrt-")).encode("ascii", "ignore").decode()
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", text).strip("-.")


def _digest(key: tuple[str, ...]) -> str:
    return hashlib.sha256(json.dumps(list(key), ensure_ascii=False).encode()).hexdigest()[:8]


def save(fig, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.svg (a suffix added, never one of the stem's dots replaced); returns both
    paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.parent / f"{stem.name}.png", stem.parent / f"{stem.name}.svg"]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return paths


def correlation_heatmap(matrix: np.ndarray, names: Sequence[str], title: str, stem: Path) -> list[Path]:
    """`correlation_figure` saved as `stem`.png and .svg."""
    return save(correlation_figure(matrix, names, title), stem)


def correlation_figure(matrix: np.ndarray, names: Sequence[str], title: str):
    """Pearson r between measures over all parameters, one cell per pair in the measures' given order. The
    colour range follows the data: the observed minimum to 1 on a sequential map when no correlation is
    negative, else a diverging map centred at 0. Cells carry their value where the cell leaves room for a
    readable number (`annotation_size`); undefined cells (a constant measure) are grey."""
    plt = pyplot()
    k = len(names)
    cell = min(0.5, 13 / max(k, 1))  # inches: the figure stays under about 16 inches
    fig, ax = plt.subplots(figsize=(cell * k + 3.5, cell * k + 2.5))
    cmap, norm, scale = correlation_colours(matrix)
    image = ax.imshow(matrix, cmap=cmap, norm=norm)
    points = 72 * cell
    ticks = min(10.0, 0.6 * points)
    ax.set_xticks(range(k), names, rotation=90, fontsize=ticks)
    ax.set_yticks(range(k), names, fontsize=ticks)
    ax.set_xlabel("measure", fontsize=9)
    ax.set_ylabel("measure", fontsize=9)
    size = annotation_size(points)
    if size is not None:
        for i in range(k):
            for j in range(k):
                if np.isfinite(matrix[i, j]):
                    ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=size,
                            color=text_colour(cmap(norm(matrix[i, j]))))
    bar = fig.colorbar(image, ax=ax, shrink=0.8)
    bar.set_label(f"Pearson r over all shared parameters ({scale})", fontsize=9)
    if np.isnan(matrix).any():
        ax.set_xlabel("measure (grey: undefined, a measure constant over the parameters)", fontsize=9)
    ax.set_title(title, fontsize=10)
    return fig


def correlation_colours(matrix: np.ndarray):
    """(colour map, norm, its description) for a correlation matrix: viridis from the observed minimum to 1
    when every defined value is >= 0, else RdBu_r symmetric about 0 out to the largest |r|; NaN is grey."""
    colors = need("matplotlib.colors", "the figures")
    finite = matrix[np.isfinite(matrix)]
    low = float(finite.min()) if finite.size else 0.0
    if low >= 0:
        low = low if low < 1 else 0.0
        norm, name, scale = colors.Normalize(vmin=low, vmax=1.0), "viridis", f"colours span the observed {low:.2f} to 1"
    else:
        half = float(np.abs(finite).max())
        norm, name, scale = colors.Normalize(vmin=-half, vmax=half), "RdBu_r", "blue negative, red positive"
    cmap = pyplot().get_cmap(name).with_extremes(bad="0.85")
    return cmap, norm, scale


def annotation_size(cell_points: float, characters: int = 5) -> float | None:
    """The font size (points) at which a number of `characters` ('-0.12') fills at most 80% of a cell's width,
    at most 10; None when that is under 6 points (too small to read: the colour bar carries the values)."""
    size = min(10.0, 0.8 * cell_points / (0.6 * characters))  # a digit is about 0.6 em wide
    return size if size >= 6 else None


def text_colour(rgba) -> str:
    """Black on a light background colour, white on a dark one (WCAG relative luminance)."""
    linear = [c / 12.92 if c <= 0.04045 else ((c + 0.055) / 1.055) ** 2.4 for c in rgba[:3]]
    luminance = 0.2126 * linear[0] + 0.7152 * linear[1] + 0.0722 * linear[2]
    return "black" if luminance > 0.18 else "white"


# Okabe & Ito's colour-blind-safe palette (yellow left out: too light on white), with a marker as a second cue:
# 7 colours and 6 markers give 42 series before a (colour, marker) pair repeats; the line style marks the
# variants within a series
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#000000")
MARKERS = ("o", "s", "^", "D", "v", "P")
LINE_STYLES = ("-", "--", "-.", ":")


def series_style(series: int, variant: int = 0) -> dict:
    """Colour, marker and line style (plot keywords) of variant `variant` of series `series`."""
    return {"color": PALETTE[series % len(PALETTE)], "marker": MARKERS[series % len(MARKERS)],
            "linestyle": LINE_STYLES[variant % len(LINE_STYLES)]}


def log_ticks(ax, values: Sequence[float]) -> None:
    """Label ax's log-scaled x axis readably: plain numbers ('0.05') at 1, 2, 3, 5, ... times powers of ten,
    the finest of those choices whose labels do not overlap once drawn (narrow ranges get several per
    decade, wide ones powers of ten only), minor ticks unlabelled. Where fewer than two such ticks fall in
    view (a range inside one decade), the positive `values` (the data's x) are the ticks, thinned until
    their labels do not overlap."""
    ticker = need("matplotlib.ticker", "the figures")
    axis = ax.xaxis
    axis.set_minor_formatter(ticker.NullFormatter())
    axis.set_major_formatter(ticker.FuncFormatter(lambda v, _: f"{v:g}"))
    for subs in ((1, 2, 3, 4, 5, 6, 8), (1, 2, 3, 5), (1, 2, 5), (1, 3), (1,)):
        axis.set_major_locator(ticker.LogLocator(base=10, subs=subs))
        labels = tick_labels(ax)
        if len(labels) >= 2 and not overlapping(labels):
            return
    if len(labels) >= 2:  # powers of ten only, still too close: matplotlib's own choice of decades
        axis.set_major_locator(ticker.LogLocator(base=10))
        return
    shown = sorted({v for v in values if v > 0})
    for stride in range(1, len(shown) + 1):
        axis.set_major_locator(ticker.FixedLocator(shown[::stride]))
        if not overlapping(tick_labels(ax)):
            return


def tick_labels(ax) -> list:
    """The window extents of ax's drawn, non-empty x tick labels in view, left to right (draws the figure)."""
    ax.figure.canvas.draw()
    low, high = sorted(ax.get_xlim())
    return sorted((label.get_window_extent() for label in ax.xaxis.get_majorticklabels()
                   if label.get_visible() and label.get_text() and low <= label.get_position()[0] <= high),
                  key=lambda box: box.x0)


def overlapping(boxes: list, gap: float = 2.0) -> bool:
    """Whether any two neighbouring boxes (left to right) are closer than `gap` pixels."""
    return any(a.x1 + gap > b.x0 for a, b in zip(boxes, boxes[1:]))


def scatter(x: np.ndarray, y: np.ndarray, names: tuple[str, str], slope: float, r: float | None, title: str,
            stem: Path) -> list[Path]:
    """Log–log scatter of two measures on sampled parameters, with the least-squares line y = a·x."""
    plt = pyplot()
    keep = (x > 0) & (y > 0)
    fig, ax = plt.subplots(figsize=(4.5, 4.2))
    ax.scatter(x[keep], y[keep], s=1, alpha=0.25, linewidths=0, rasterized=True)
    if keep.any() and np.isfinite(slope) and slope > 0:
        grid = np.logspace(np.log10(x[keep].min()), np.log10(x[keep].max()), 50)
        ax.plot(grid, slope * grid, color="C3", label=f"y = {slope:.3g}·x (least squares through 0)")
        ax.legend(fontsize=7, loc="upper left")
    ax.set(xscale="log", yscale="log", xlabel=f"{names[0]} importance", ylabel=f"{names[1]} importance")
    r_text = "" if r is None else f", Pearson r = {r:.3f}"
    ax.set_title(f"{title}\n{keep.sum()} of {len(x)} sampled weights shown (both > 0){r_text}", fontsize=8)
    return save(fig, stem)


def bias_curves(task: dict, every: int, stem: Path) -> list[Path]:
    """Running sums of SI, SIU and SIB against the full-gradient path integral and the actual loss decrease."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    steps = recorded_steps(task)
    for name, label in (("si", "SI: Σ −g_t·Δ_t (same batch)"), ("siu", "SIU: Σ −g'_t·Δ_t (independent batch)"),
                        ("sib", "SIB: Σ −(g_t − g'_t)·Δ_t (bias only)")):
        ax.plot(steps, task[name], label=label, lw=1)
    points = task["checkpoints"]
    ax.plot([c["step"] for c in points], [c["full_gradient_path"] for c in points], "k--", lw=1,
            label=f"Σ −∇L·Δ, full training-set gradient at the start of every {every} steps")
    if "full_gradient_path_trapezoid" in points[0]:
        ax.plot([c["step"] for c in points], [c["full_gradient_path_trapezoid"] for c in points], "k:", lw=1,
                label="the same, trapezoid rule (mean of both ends' gradients)")
    ax.plot([c["step"] for c in points], [c["loss_decrease"] for c in points], "o", ms=3, color="C3",
            label="actual training-loss decrease L(θ_0) − L(θ_t)")
    ax.set(xlabel=f"step within task {task['task'] + 1}", ylabel="summed over all shared parameters")
    ratio = task["ratio_si_to_siu"]
    ax.set_title(f"SI's path integral vs the loss it explains, task {task['task'] + 1}"
                 + ("" if ratio is None else f" (Σ SI / Σ SIU = {ratio:.2f})"), fontsize=9)
    ax.legend(fontsize=7)
    return save(fig, stem)


def noise_plot(records: list[dict], summary: dict, stem: Path) -> list[Path]:
    """The ratio ‖g_batch − g_full‖² / ‖g_full‖² over training, and the fraction of steps above each x."""
    plt = pyplot()
    fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.8))
    ratios = np.array([r["ratio"] if r["ratio"] is not None else np.nan for r in records])
    left.plot(np.arange(len(ratios)), ratios, ".", ms=2)
    left.set(yscale="log", xlabel="recorded step (all tasks in order)", ylabel="‖g_batch − g_full‖² / ‖g_full‖²",
             title="Minibatch gradient noise relative to the full gradient")
    finite = np.sort(ratios[np.isfinite(ratios)])
    if len(finite):
        right.plot(finite, 1 - np.arange(len(finite)) / len(finite))
    right.set(xscale="log", xlabel="x", ylabel="fraction of steps with ratio > x",
              title=f"Median ratio {summary['median_ratio']:.3g}" if summary["median_ratio"] else "")
    for ax in (left, right):
        ax.title.set_fontsize(9)
    return save(fig, stem)
