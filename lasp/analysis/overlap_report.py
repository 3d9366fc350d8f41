"""`lasp overlap`: every sharing statistic of a mask set, written as tables and plots.

:func:`overlap_analysis` is what the CLI, the notebooks and the demo report
call. It returns an :class:`OverlapResult` of plain lists and dicts (no pandas)
and writes into ``out_dir``:

========================  ======================================================
``overlap.json``           everything below in one file
``iou.csv``                pairwise IoU |A∧B|/|A∨B| (symmetric)
``lass_overlap.csv``       LaSS overlap |A∧B|/|A| (row A, column B)
``per_layer.csv``          per layer and language pair: intersection, union, IoU, both LaSS overlaps
``per_kind.csv``           the same per module kind (q, k, v, out, ffn-in, ffn-out)
``languages.csv``          per language: kept weights, density, weights unique to it
``sharing.csv``            weights kept by exactly k languages, k = 0..N
``specificity.json``       mean pairwise IoU against random masks of the same per-tensor density,
                           and the share of kept weights unique to each language (see ``overlap.specificity``)
``summary.txt``            the terminal summary
``iou_heatmap.png``        ``lass_heatmap.png``  ``layer_curves.png``
``dendrogram.png``         (≥ 2 languages)       ``sharing_histogram.png``
========================  ======================================================
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from typing import Any, Mapping

import numpy as np

from lasp.analysis.clustering import cluster_languages, family_test, load_families
from lasp.analysis.overlap import GroupCounts, OverlapStats, compute_overlap, specificity
from lasp.analysis.plots import plot_dendrogram, plot_iou_heatmap, plot_layer_curves, plot_sharing_histogram
from lasp.analysis.tables import fmt, format_table, write_csv, write_json, write_matrix_csv
from lasp.errors import ConfigError
from lasp.io import atomic_write


@dataclass
class OverlapResult:
    languages: list[str]
    numel: int                                  # targeted weights per language
    iou: list[list[float]]
    lass_overlap: list[list[float]]
    kept: list[int]
    density: list[float]
    unique_per_language: list[int]
    per_layer: dict[int, dict[str, Any]]
    per_kind: dict[str, dict[str, Any]]
    sharing: dict[str, Any]
    specificity: dict[str, Any] = field(default_factory=dict)
    clustering: dict[str, Any] | None = None
    families: dict[str, Any] | None = None
    files: dict[str, str] = field(default_factory=dict)
    summary: str = ""

    def as_dict(self) -> dict[str, Any]:
        return {k: v for k, v in self.__dict__.items() if k != "summary"}


def _mean_pairwise(matrix: list[list[float]]) -> float:
    m = np.asarray(matrix, dtype=float)
    if len(m) < 2:
        return float("nan")
    values = m[np.triu_indices(len(m), k=1)]
    return float(np.nanmean(values)) if not np.isnan(values).all() else float("nan")


def _pair_rows(group_key: str, groups: Mapping[Any, GroupCounts], languages: list[str]) -> list[dict[str, Any]]:
    rows = []
    for key, counts in groups.items():
        iou, lass = counts.iou(), counts.lass_overlap()
        for a in range(len(languages)):
            for b in range(a + 1, len(languages)):
                rows.append({
                    group_key: key, "lang_a": languages[a], "lang_b": languages[b], "numel": counts.numel,
                    "kept_a": counts.kept[a], "kept_b": counts.kept[b], "intersection": counts.inter[a][b],
                    "union": counts.union(a, b), "iou": iou[a][b],
                    "lass_a_in_b": lass[a][b], "lass_b_in_a": lass[b][a],
                })
    return rows


def build_result(stats: OverlapStats) -> OverlapResult:
    """The in-memory result (no files) of :func:`compute_overlap`'s counts."""
    overall = stats.overall
    return OverlapResult(
        languages=list(stats.languages), numel=overall.numel, iou=overall.iou(),
        lass_overlap=overall.lass_overlap(), kept=list(overall.kept), density=overall.density(),
        unique_per_language=list(stats.unique_per_language),
        per_layer={layer: g.as_dict() for layer, g in stats.per_layer.items()},
        per_kind={kind: g.as_dict() for kind, g in stats.per_kind.items()},
        sharing=stats.sharing.as_dict(), specificity=specificity(stats),
    )


def overlap_analysis(masks: Any, out_dir: str | os.PathLike | None = None,
                     families: Mapping[str, str] | str | os.PathLike | None = None,
                     n_permutations: int = 2000, seed: int = 0, plots: bool = True,
                     progress: bool = False) -> OverlapResult:
    """Overlap statistics of ``masks`` (LanguageMasks or {lang: {name: bool tensor}}).

    ``families``: a {language: family} map or a YAML/JSON file holding one; adds
    mean IoU within vs across families with a permutation-test p-value. With
    ``out_dir`` the tables and (if ``plots``) PNGs are written there and listed
    in ``result.files``; ``result.summary`` is the compact terminal table.
    """
    family_map = None
    if families is not None:
        # Checked before the (possibly long) counting so that a bad families file fails at once.
        family_map = families if isinstance(families, Mapping) else load_families(families)
        names = list(masks.languages) if hasattr(masks, "languages") else [str(l) for l in masks]
        missing = [lang for lang in names if lang not in family_map]
        if missing:
            where = f"{os.fspath(families)}: " if not isinstance(families, Mapping) else "families: "
            raise ConfigError(f"{where}no family given for language(s) {', '.join(missing)}")
    stats = compute_overlap(masks, progress=progress)
    result = build_result(stats)
    languages = result.languages
    if len(languages) >= 2:
        result.clustering = cluster_languages(result.iou, languages).as_dict()
    if family_map is not None:
        result.families = family_test(result.iou, languages, family_map, n_permutations, seed).as_dict()
    if out_dir is not None:
        result.files = _write(stats, result, os.fspath(out_dir), plots)
    result.summary = format_summary(result)
    if out_dir is not None:
        atomic_write(result.files["summary"], result.summary + "\n")
    return result


def _write(stats: OverlapStats, result: OverlapResult, out_dir: str, plots: bool) -> dict[str, str]:
    os.makedirs(out_dir, exist_ok=True)
    langs = result.languages
    j = lambda name: os.path.join(out_dir, name)  # noqa: E731
    files = {
        "json": j("overlap.json"),
        "iou_csv": write_matrix_csv(result.iou, langs, j("iou.csv")),
        "lass_csv": write_matrix_csv(result.lass_overlap, langs, j("lass_overlap.csv"), corner="A \\ B"),
        "per_layer_csv": write_csv(_pair_rows("layer", stats.per_layer, langs), j("per_layer.csv")),
        "per_kind_csv": write_csv(_pair_rows("kind", stats.per_kind, langs), j("per_kind.csv")),
        "languages_csv": write_csv([
            {"language": lang, "numel": result.numel, "kept": result.kept[i], "density": result.density[i],
             "unique": result.unique_per_language[i],
             "unique_fraction_of_kept": result.unique_per_language[i] / result.kept[i] if result.kept[i] else None,
             "random_unique_fraction_of_kept": result.specificity["random_unique_share"][i]}
            for i, lang in enumerate(langs)], j("languages.csv")),
        "sharing_csv": write_csv([
            {"k_languages": k, "weights": c, "fraction_of_targets": result.sharing["fraction_of_targets"][k],
             "fraction_of_union": result.sharing["fraction_of_union"][k]}
            for k, c in enumerate(result.sharing["counts"])], j("sharing.csv")),
        "specificity": write_json(result.specificity | {"languages": langs}, j("specificity.json")),
        "summary": j("summary.txt"),
    }
    if plots:
        files["iou_heatmap"] = plot_iou_heatmap(result.iou, langs, j("iou_heatmap.png"))
        files["lass_heatmap"] = plot_iou_heatmap(
            result.lass_overlap, langs, j("lass_heatmap.png"),
            title="LaSS overlap |A∧B| / |A| (row A, column B)", label="overlap")
        if stats.per_layer:
            layers = list(stats.per_layer)
            files["layer_curves"] = plot_layer_curves(
                layers, [stats.per_layer[l].iou() for l in layers],
                [stats.per_layer[l].density() for l in layers], langs, j("layer_curves.png"),
                random_iou_per_layer=[stats.per_layer[l].random_iou() for l in layers])
        if result.clustering:
            files["dendrogram"] = plot_dendrogram(result.clustering["linkage"], langs, j("dendrogram.png"))
        files["sharing_histogram"] = plot_sharing_histogram(result.sharing["counts"], j("sharing_histogram.png"))
    write_json(result.as_dict() | {"files": files}, files["json"])
    return files


def format_summary(result: OverlapResult, max_matrix: int = 12) -> str:
    """The compact terminal summary: densities, IoU, sharing, per-kind/layer means, families, files."""
    langs, n = result.languages, len(result.languages)
    lines = [f"{n} language(s), {result.numel:,} targeted weights per language"]
    lines.append(format_table(
        ["language", "kept", "density", "unique", "unique/kept", "if random"],
        [[lang, result.kept[i], result.density[i], result.unique_per_language[i],
          result.unique_per_language[i] / result.kept[i] if result.kept[i] else float("nan"),
          result.specificity["random_unique_share"][i]]
         for i, lang in enumerate(langs)]))
    if 2 <= n <= max_matrix:
        lines += ["", "pairwise IoU"]
        lines.append(format_table(["", *langs], [[lang, *row] for lang, row in zip(langs, result.iou)]))
    elif n > max_matrix:
        iu = np.triu_indices(n, k=1)
        pairs = sorted(zip(np.asarray(result.iou)[iu], iu[0], iu[1]), key=lambda t: -t[0])
        show = pairs[:5] + pairs[-5:]
        lines += ["", "pairwise IoU: 5 highest and 5 lowest pairs"]
        lines.append(format_table(["pair", "IoU"], [[f"{langs[a]}–{langs[b]}", float(v)] for v, a, b in show]))
    s = result.sharing
    lines += ["", (f"sharing: union of masks = {fmt(s['union'] / s['total'] if s['total'] else float('nan'), '.1%')} "
                   f"of targets; of the union, shared by all {fmt(s['shared_by_all_fraction_of_union'], '.1%')}, "
                   f"unique to one language {fmt(s['unique_fraction_of_union'], '.1%')}, "
                   f"the rest {fmt(s['rest_fraction_of_union'], '.1%')}")]
    if n >= 2:
        sp = result.specificity
        lines.append(f"specificity: mean pairwise IoU {fmt(sp['mean_iou'])}, random masks of the same per-tensor "
                     f"density {fmt(sp['mean_random_iou'])}: ratio {fmt(sp['iou_ratio'], '.2f')} (1 = chance level, "
                     f"at most {fmt(sp['max_iou_ratio'], '.2f')}); kept weights unique to one language "
                     f"{fmt(sp['mean_unique_share'], '.1%')} (random masks {fmt(sp['mean_random_unique_share'], '.1%')})")
        kinds = list(result.per_kind)
        lines.append("mean pairwise IoU per module: " + "  ".join(
            f"{k} {fmt(_mean_pairwise(result.per_kind[k]['iou']), '.3f')}" for k in kinds))
        lines.append("mean pairwise IoU per layer:  " + "  ".join(
            f"{l}: {fmt(_mean_pairwise(g['iou']), '.3f')}" for l, g in result.per_layer.items()))
    if result.clustering:
        lines.append("dendrogram leaf order: " + " ".join(result.clustering["order"]))
    if result.families:
        f = result.families
        lines.append(f"families: mean IoU within {fmt(f['within_mean'])} ({f['n_within_pairs']} pairs) vs across "
                     f"{fmt(f['across_mean'])} ({f['n_across_pairs']} pairs); permutation p = "
                     f"{f['p_value']:.4f} ({f['n_permutations']} permutations)")
    if result.files:
        lines += ["", "files:"]
        width = max(len(k) for k in result.files)
        lines += [f"  {k.ljust(width)}  {v}" for k, v in result.files.items()]
    return "\n".join(lines)


def specificity_summary(masks) -> str:
    """How language-specific ``masks`` is, in two lines (:func:`lasp.analysis.overlap.specificity`): mean pairwise
    IoU against random masks of the same per-tensor densities, and the share of kept weights unique to a language."""
    if len(masks.languages) < 2:
        return "specificity: needs at least two languages"
    s = specificity(compute_overlap(masks))
    return (f"specificity: mean pairwise IoU {s['mean_iou']:.3f} vs {s['mean_random_iou']:.3f} for random masks of "
            f"the same densities (ratio {s['iou_ratio']:.2f}; 1 = chance, {s['max_iou_ratio']:.2f} = nested)\n"
            f"kept weights unique to one language: {s['mean_unique_share']:.3f} on average "
            f"(random masks: {s['mean_random_unique_share']:.3f})")
