"""PNG plots for the overlap and parameter analyses.

Figures are built with :class:`matplotlib.figure.Figure` and written through the
Agg canvas, never through pyplot: nothing here touches the global backend, opens
a window or leaks figures, so the functions are safe in servers, tests and
notebooks alike. Every function returns the path it wrote.
"""
from __future__ import annotations

import math
import os
from typing import Any, Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from lasp.analysis.tables import human_bytes
from lasp.io import atomic_path


def _save(fig: Figure, path: str | os.PathLike) -> str:
    path = os.fspath(path)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    FigureCanvasAgg(fig)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=120, bbox_inches="tight", format=os.path.splitext(path)[1][1:] or "png")
    return path


def plot_iou_heatmap(iou_matrix: Sequence[Sequence[float]], languages: Sequence[str], path: str | os.PathLike,
                     title: str = "Pairwise IoU of language masks", label: str = "IoU") -> str:
    """Heatmap of an N×N matrix (IoU, or the asymmetric LaSS overlap: rows = A, columns = B)."""
    matrix = np.asarray(iou_matrix, dtype=float)
    n = len(languages)
    size = max(3.5, 0.45 * n + 2.0)
    fig = Figure(figsize=(size + 1.0, size))
    ax = fig.add_subplot()
    image = ax.imshow(matrix, vmin=0.0, vmax=1.0, cmap="viridis")
    ax.set_xticks(range(n), labels=list(languages), rotation=90 if n > 8 else 0)
    ax.set_yticks(range(n), labels=list(languages))
    if n <= 16:  # numbers stay legible up to about this size
        for a in range(n):
            for b in range(n):
                value = matrix[a, b]
                text = "–" if math.isnan(value) else f"{value:.2f}"
                ax.text(b, a, text, ha="center", va="center", fontsize=7,
                        color="black" if not math.isnan(value) and value > 0.6 else "white")
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=label, fraction=0.046, pad=0.04)
    return _save(fig, path)


def plot_layer_curves(layers: Sequence[int], iou_per_layer: Sequence[Sequence[Sequence[float]]],
                      density_per_layer: Sequence[Sequence[float]], languages: Sequence[str],
                      path: str | os.PathLike,
                      random_iou_per_layer: Sequence[Sequence[Sequence[float]]] | None = None) -> str:
    """Left: mean pairwise IoU per layer with its min–max band (and, if given, the mean IoU random masks of
    the same per-tensor density would have: the chance level). Right: each language's density per layer."""
    layers = list(layers)
    n = len(languages)
    fig = Figure(figsize=(10, 4))
    ax_iou, ax_density = fig.subplots(1, 2)
    if n > 1:
        iu = np.triu_indices(n, k=1)
        pairs = np.array([np.asarray(m, dtype=float)[iu] for m in iou_per_layer])  # [layers, pairs]
        mean = np.nanmean(pairs, axis=1)
        ax_iou.fill_between(layers, np.nanmin(pairs, axis=1), np.nanmax(pairs, axis=1), alpha=0.25,
                            label="min–max over pairs")
        ax_iou.plot(layers, mean, marker="o", label="mean over pairs")
        if random_iou_per_layer is not None:
            chance = np.array([np.asarray(m, dtype=float)[iu] for m in random_iou_per_layer])
            ax_iou.plot(layers, np.nanmean(chance, axis=1), linestyle="--", color="gray",
                        label="random masks, same density")
        ax_iou.legend(fontsize=8)
    ax_iou.set_xlabel("encoder layer")
    ax_iou.set_ylabel("pairwise IoU")
    ax_iou.set_ylim(0, 1.02)
    ax_iou.set_title("Sharing per layer")
    density = np.asarray(density_per_layer, dtype=float)  # [layers, languages]
    for j, lang in enumerate(languages):
        ax_density.plot(layers, density[:, j], marker=".", label=lang)
    ax_density.set_xlabel("encoder layer")
    ax_density.set_ylabel("fraction of weights kept")
    ax_density.set_ylim(0, 1.02)
    ax_density.set_title("Mask density per layer")
    if n <= 12:
        ax_density.legend(fontsize=7, ncol=2)
    for ax in (ax_iou, ax_density):
        ax.set_xticks(layers)
        ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_dendrogram(linkage: Sequence[Sequence[float]], languages: Sequence[str], path: str | os.PathLike) -> str:
    """Dendrogram of the languages clustered on 1 − IoU."""
    from scipy.cluster.hierarchy import dendrogram

    fig = Figure(figsize=(max(4.0, 0.5 * len(languages) + 2.0), 3.5))
    ax = fig.add_subplot()
    dendrogram(np.asarray(linkage, dtype=float), labels=list(languages), ax=ax, color_threshold=None)
    ax.set_ylabel("1 − IoU")
    ax.set_title("Languages clustered by mask overlap (average linkage)")
    return _save(fig, path)


def plot_sharing_histogram(counts: Sequence[int], path: str | os.PathLike) -> str:
    """Fraction of the union of all masks kept by exactly k languages, k = 1..N."""
    counts = np.asarray(counts, dtype=float)
    union = counts[1:].sum()
    ks = np.arange(1, len(counts))
    fractions = counts[1:] / union if union else np.zeros_like(ks, dtype=float)
    fig = Figure(figsize=(max(4.0, 0.4 * len(ks) + 2.5), 3.5))
    ax = fig.add_subplot()
    bars = ax.bar(ks, fractions, color="tab:blue")
    if len(ks) > 1:
        bars[0].set_color("tab:orange")   # unique to one language
        bars[-1].set_color("tab:green")   # shared by all
    ax.set_xticks(ks)
    ax.set_xlabel("number of languages keeping the weight")
    ax.set_ylabel("fraction of the union of masks")
    not_kept = counts[0] / counts.sum() if counts.sum() else 0.0
    ax.set_title(f"Weight sharing across languages ({not_kept:.1%} of targets kept by none)")
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_parameter_bars(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike,
                        key: str = "per_language_bytes") -> str:
    """Horizontal bars (log scale) of the language-specific storage of each method in a parameter table."""
    labels = [f"{r['method']} ({r['setting']})" if r.get("setting") else str(r["method"]) for r in rows]
    values = [float(r.get(key) or 0) for r in rows]
    fig = Figure(figsize=(8, 0.45 * len(rows) + 1.5))
    ax = fig.add_subplot()
    positions = np.arange(len(rows))
    ax.barh(positions, [max(v, 1.0) for v in values], color="tab:purple")
    ax.set_yticks(positions, labels=labels)
    ax.invert_yaxis()
    ax.set_xscale("log")
    for y, v in zip(positions, values):
        ax.text(max(v, 1.0), y, f" {human_bytes(v)}" if "bytes" in key else f" {v:,.0f}", va="center", fontsize=8)
    ax.set_xlabel(key.replace("_", " ") + " (log scale)")
    ax.set_title("Language-specific storage per language")
    ax.grid(axis="x", alpha=0.3)
    return _save(fig, path)


def plot_cer_by_language(intervals: Mapping[str, Mapping[str, Sequence[float]]], languages: Sequence[str],
                         path: str | os.PathLike) -> str:
    """Grouped bars: each system's CER per language, error bars from its (mean, low, high) interval."""
    systems = list(intervals)
    fig = Figure(figsize=(max(5.0, 0.9 * len(languages) * max(1, len(systems)) / 2 + 2.0), 4))
    ax = fig.add_subplot()
    width = 0.8 / max(1, len(systems))
    x = np.arange(len(languages))
    for i, system in enumerate(systems):
        values = np.array([intervals[system][lang] for lang in languages], dtype=float)  # [languages, 3]
        mean, low, high = values[:, 0], values[:, 1], values[:, 2]
        # percentile intervals need not straddle the mean exactly: clip so matplotlib gets non-negative errors
        err = np.vstack([np.clip(mean - low, 0, None), np.clip(high - mean, 0, None)])
        ax.bar(x + (i - (len(systems) - 1) / 2) * width, mean, width, yerr=err, capsize=3, label=system)
    ax.set_xticks(x, labels=list(languages))
    ax.set_ylabel("CER (mean over seeds)")
    ax.set_title("CER per language with 95 % bootstrap intervals")
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)
    return _save(fig, path)


def plot_cer_vs_sparsity(rows: Sequence[Mapping[str, Any]], path: str | os.PathLike) -> str:
    """One line per ``method``: CER against ``sparsity``; ``low``/``high`` (optional) give error bars."""
    methods = list(dict.fromkeys(str(r["method"]) for r in rows))
    fig = Figure(figsize=(6, 4))
    ax = fig.add_subplot()
    for i, method in enumerate(methods):
        pts = sorted((r for r in rows if str(r["method"]) == method), key=lambda r: float(r["sparsity"]))
        # a small sideways offset per method keeps error bars at the same sparsity from hiding each other
        xs = np.array([float(r["sparsity"]) for r in pts]) + (i - (len(methods) - 1) / 2) * 0.004
        ys = np.array([float(r["cer"]) for r in pts])
        if all(r.get("low") is not None and r.get("high") is not None for r in pts):
            err = np.vstack([np.clip(ys - [float(r["low"]) for r in pts], 0, None),
                             np.clip(np.array([float(r["high"]) for r in pts]) - ys, 0, None)])
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=method)
        else:
            ax.plot(xs, ys, marker="o", label=method)
    ax.set_xlabel("sparsity (fraction of targeted weights removed)")
    ax.set_ylabel("macro CER")
    ax.set_title("CER vs sparsity per mask search method")
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)
    return _save(fig, path)


def plot_against_strength(panels: Mapping[str, Mapping[str, Sequence[Sequence[float]]]], xlabel: str,
                          path: str | os.PathLike) -> str:
    """One panel per title, one line per series of (x, y, low, high) points, error bars from low/high; x on a
    log scale (base-model steps grow geometrically); a dashed line at 0."""
    fig = Figure(figsize=(6 * max(1, len(panels)), 4))
    axes = fig.subplots(1, max(1, len(panels)), squeeze=False, sharex=True)[0]  # strengths line up
    for ax, (title, series) in zip(axes, panels.items()):
        for i, (name, points) in enumerate(series.items()):
            pts = sorted(points)
            # a small sideways factor per series keeps error bars at the same x from hiding each other
            xs = np.array([p[0] for p in pts], dtype=float) * (1 + 0.03 * (i - (len(series) - 1) / 2))
            ys = np.array([p[1] for p in pts], dtype=float)
            err = np.vstack([np.clip(ys - [p[2] for p in pts], 0, None), np.clip(np.array([p[3] for p in pts]) - ys,
                                                                                 0, None)])
            ax.errorbar(xs, ys, yerr=err, marker="o", capsize=3, label=name)
        ax.axhline(0.0, color="gray", linestyle="--", linewidth=0.8)
        ax.set_xscale("log")
        ax.set_xlabel(xlabel)
        ax.set_title(title, fontsize=10)
        ax.grid(alpha=0.3)
        if series:
            ax.legend(fontsize=7)
    return _save(fig, path)
