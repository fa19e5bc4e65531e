"""Figures of the analyses, each saved as PNG and SVG, titled and labelled for a reader without the code."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np

from clreg.analysis.bias import recorded_steps


def pyplot():
    """matplotlib.pyplot with the file-only Agg backend."""
    import matplotlib

    matplotlib.use("Agg")  # files only, no display
    import matplotlib.pyplot as plt

    return plt


def save(fig, stem: Path) -> list[Path]:
    """Write `stem`.png and `stem`.svg; returns both paths."""
    stem.parent.mkdir(parents=True, exist_ok=True)
    paths = [stem.with_suffix(".png"), stem.with_suffix(".svg")]
    for path in paths:
        fig.savefig(path, dpi=120, bbox_inches="tight")
    pyplot().close(fig)
    return paths


def correlation_heatmap(matrix: np.ndarray, names: Sequence[str], title: str, stem: Path) -> list[Path]:
    """Pearson r between measures over all parameters, one cell per pair, annotated."""
    plt = pyplot()
    k = len(names)
    fig, ax = plt.subplots(figsize=(0.45 * k + 3, 0.45 * k + 2))
    image = ax.imshow(matrix, vmin=-1, vmax=1, cmap="RdBu_r")
    ax.set_xticks(range(k), names, rotation=90, fontsize=7)
    ax.set_yticks(range(k), names, fontsize=7)
    for i in range(k):
        for j in range(k):
            if not np.isnan(matrix[i, j]):
                ax.text(j, i, f"{matrix[i, j]:.2f}", ha="center", va="center", fontsize=5)
    fig.colorbar(image, ax=ax, label="Pearson correlation over all shared parameters")
    ax.set_title(title, fontsize=9)
    return save(fig, stem)


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
