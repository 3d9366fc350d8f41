"""Analyses of a mask set: how much the language sub-networks share (overlap) and
what they cost next to adapters, LoRA and per-language copies (params)."""
from lasp.analysis.clustering import cluster_languages, family_test, load_families
from lasp.analysis.overlap import compute_overlap, iou, lass_overlap
from lasp.analysis.overlap_report import OverlapResult, format_summary, overlap_analysis
from lasp.analysis.params import format_markdown, parameter_table, write_parameter_report
from lasp.analysis.plots import (
    plot_dendrogram,
    plot_iou_heatmap,
    plot_layer_curves,
    plot_parameter_bars,
    plot_sharing_histogram,
)

__all__ = [
    "OverlapResult", "cluster_languages", "compute_overlap", "family_test", "format_markdown", "format_summary",
    "iou", "lass_overlap", "load_families", "overlap_analysis", "parameter_table", "plot_dendrogram",
    "plot_iou_heatmap", "plot_layer_curves", "plot_parameter_bars", "plot_sharing_histogram",
    "write_parameter_report",
]
