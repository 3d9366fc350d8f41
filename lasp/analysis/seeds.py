"""The multi-seed summary of several finished `lasp run` output directories, one per seed.

Each directory holds what `lasp run` writes: ``recipe.yaml`` (its seed, and the
``run`` section with languages, systems and low-resource languages) and one
evaluation directory per system (``eval-<system>/results.json`` and
``recogs-<lang>.txt``). :func:`seed_summary` reads them, aggregates every
system across seeds (mean ± std of macro CER, per language, per resource
group) and tests the claims lasp < shared, lasp < random and lasp vs adapters,
over all languages and per resource group, with paired hierarchical bootstrap
intervals (:mod:`lasp.analysis.stats`). Nothing is trained or decoded here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Mapping, Sequence

import yaml

from lasp.analysis.plots import plot_cer_by_language
from lasp.analysis.stats import Comparison, aggregate, cer_interval, compare, group_languages
from lasp.analysis.tables import fmt, write_json
from lasp.analysis.utterances import LanguageScores, read_eval_dir
from lasp.errors import ConfigError
from lasp.io import atomic_write

# (system, baseline, label): each is tested as the paired difference system − baseline
CLAIMS = (("lasp", "shared", "lasp < shared"), ("lasp", "random", "lasp < random"),
          ("lasp", "adapters", "lasp vs adapters"))
EVAL_DIR = "eval-{system}"   # where `lasp run` puts each system's evaluation
# ML-SUPERB 2.0 reports, besides the mean CER over languages, the worst language's CER and the standard deviation
# of CER across languages (lasp.analysis.stats.STATISTICS)
SUPERB_FIGURES = ("worst", "spread")
SUPERB_NAMES = {"worst": "worst-language CER", "spread": "CER std across languages"}


@dataclass
class SeedRun:
    path: Path
    seed: object
    languages: list[str]
    groups: dict[str, str]
    scores: dict[str, dict[str, LanguageScores]]   # {system: {language: scores}}


def read_run(run_dir: str | os.PathLike, systems: Sequence[str] | None = None,
             eval_dir: str = EVAL_DIR) -> SeedRun:
    """One seed's run directory: its seed and resource groups from ``recipe.yaml``, every system's scores."""
    run_dir = Path(run_dir)
    recipe_path = run_dir / "recipe.yaml"
    try:
        recipe = yaml.safe_load(recipe_path.read_text(encoding="utf-8"))
    except OSError:
        raise ConfigError(f"{recipe_path}: missing; {run_dir} is not a `lasp run` output directory") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"{recipe_path}: not valid YAML ({exc})") from None
    if not isinstance(recipe, dict) or "seed" not in recipe:
        raise ConfigError(f"{recipe_path}: no 'seed' key")
    run = recipe.get("run") or {}
    languages = [str(lang) for lang in run.get("languages") or []]
    if not languages:
        raise ConfigError(f"{recipe_path}: key 'run.languages' is empty or missing")
    systems = list(systems) if systems else [str(s) for s in run.get("systems") or []]
    if not systems:
        raise ConfigError(f"{recipe_path}: key 'run.systems' is empty or missing")
    low = {str(lang) for lang in run.get("low_resource") or []}
    groups = {lang: ("low" if lang in low else "high") for lang in languages} if low else {}
    scores = {s: read_eval_dir(run_dir / eval_dir.format(system=s), languages) for s in systems}
    return SeedRun(run_dir, recipe["seed"], languages, groups, scores)


@dataclass
class SeedSummary:
    seeds: list
    runs: list[str]
    languages: list[str]
    systems: list[str]
    groups: dict[str, list[str]]
    aggregates: dict[str, dict]                       # system → stats.aggregate(...)
    intervals: dict[str, dict[str, tuple[float, float, float]]]   # system → language → (mean, low, high)
    macro_intervals: dict[str, tuple[float, float, float]]        # system → macro CER (mean, low, high)
    comparisons: list[Comparison]
    n_boot: int
    markdown: str = ""
    files: dict[str, str] = field(default_factory=dict)
    # ML-SUPERB 2.0's figures: system → {"worst" | "spread": (mean, low, high)}, and every claim judged on them
    superb: dict[str, dict[str, tuple[float, float, float]]] = field(default_factory=dict)
    superb_comparisons: list[Comparison] = field(default_factory=list)

    def as_dict(self) -> dict:
        return {"seeds": self.seeds, "runs": self.runs, "languages": self.languages, "systems": self.systems,
                "groups": self.groups, "aggregates": self.aggregates,
                "intervals": {s: {l: list(v) for l, v in iv.items()} for s, iv in self.intervals.items()},
                "macro_intervals": {s: list(v) for s, v in self.macro_intervals.items()},
                "comparisons": [c.as_dict() for c in self.comparisons], "n_boot": self.n_boot,
                "superb": {s: {k: list(v) for k, v in f.items()} for s, f in self.superb.items()},
                "superb_comparisons": [c.as_dict() for c in self.superb_comparisons], "files": self.files}


def seed_summary(run_dirs: Sequence[str | os.PathLike], *, systems: Sequence[str] | None = None,
                 groups: Mapping[str, str] | None = None, claims: Sequence[tuple[str, ...]] = CLAIMS,
                 n_boot: int = 2000, seed: int = 0, eval_dir: str = EVAL_DIR,
                 out_dir: str | os.PathLike | None = None, plots: bool = True) -> SeedSummary:
    """Aggregate ``run_dirs`` (one finished `lasp run` per seed) and test ``claims``.

    A claim is (system, baseline) or (system, baseline, label); its figure is system − baseline.

    ``groups`` maps language → resource group; by default languages listed in the recipes'
    ``run.low_resource`` are "low" and the others "high". A claim whose systems were not both run is
    skipped. With ``out_dir``: ``seeds_summary.md``, ``seeds_summary.json`` and (if ``plots``)
    ``cer_by_language.png`` are written there.
    """
    if not run_dirs:
        raise ConfigError("seed summary: no run directories given")
    runs = [read_run(d, systems, eval_dir) for d in run_dirs]
    first, seen = runs[0], {}
    for r in runs:
        if str(r.seed) in seen:
            raise ConfigError(f"{r.path}: seed {r.seed} is also the seed of {seen[str(r.seed)]}; give one run per seed")
        seen[str(r.seed)] = r.path
        if r.languages != first.languages:
            raise ConfigError(f"{r.path}: languages {r.languages} differ from {first.path}'s {first.languages}")
        if set(r.scores) != set(first.scores):
            raise ConfigError(f"{r.path}: systems {sorted(r.scores)} differ from {first.path}'s "
                              f"{sorted(first.scores)}")
        if groups is None and r.groups != first.groups:
            raise ConfigError(f"{r.path}: run.low_resource differs from {first.path}'s")
    seeds = [r.seed for r in runs]
    languages, names = first.languages, list(first.scores)
    grouping = dict(groups) if groups is not None else first.groups
    by_group = group_languages(languages, grouping)
    per_system = {s: {r.seed: r.scores[s] for r in runs} for s in names}
    aggregates = {s: aggregate(per_system[s], languages, grouping) for s in names}
    intervals = {s: {lang: cer_interval(per_system[s], lang, n_boot=n_boot, seed=seed) for lang in languages}
                 for s in names}
    macro_intervals = {s: cer_interval(per_system[s], languages, n_boot=n_boot, seed=seed) for s in names}
    superb = {s: {f: cer_interval(per_system[s], languages, n_boot=n_boot, seed=seed, statistic=f)
                  for f in SUPERB_FIGURES} for s in names}
    comparisons, superb_comparisons = [], []
    scopes = [("all", languages)] + (list(by_group.items()) if len(by_group) > 1 else [])
    for system, baseline, *label in claims:
        if system not in per_system or baseline not in per_system:
            continue
        for scope, langs in scopes:
            comparisons.append(compare(per_system[system], per_system[baseline], langs, names=(system, baseline),
                                       scope=scope, n_boot=n_boot, seed=seed, label="".join(label)))
        # the worst language (a low-resource one, where there are any) and the gap between languages
        superb_comparisons += [compare(per_system[system], per_system[baseline], languages, names=(system, baseline),
                                       n_boot=n_boot, seed=seed, label="".join(label), statistic=f)
                               for f in SUPERB_FIGURES]
    summary = SeedSummary(seeds, [str(r.path) for r in runs], languages, names, by_group, aggregates, intervals,
                          macro_intervals, comparisons, n_boot, superb=superb, superb_comparisons=superb_comparisons)
    summary.markdown = format_seed_markdown(summary)
    if out_dir is not None:
        summary.files = _write(summary, Path(out_dir), plots)
    return summary


def _pm(entry: dict) -> str:
    return f"{fmt(entry['mean'])} ± {fmt(entry['std'])}"


def format_seed_markdown(summary: SeedSummary) -> str:
    """Tables: macro CER per system (and group), per-language CER, and every claim with interval and verdict."""
    langs, groups = summary.languages, list(summary.groups)
    n = len(summary.seeds)
    out = [f"CER over {n} seed(s) ({', '.join(map(str, summary.seeds))}): mean ± sample standard deviation "
           "across seeds; macro CER is the unweighted mean of the languages' CERs.", ""]
    group_cols = [f"{g} macro ({', '.join(summary.groups[g])})" for g in groups]
    out.append("| " + " | ".join(["system", "macro CER", "95 % interval", *group_cols]) + " |")
    out.append("|---|---|---|" + "---|" * len(groups))
    for s in summary.systems:
        a, (_, low, high) = summary.aggregates[s], summary.macro_intervals[s]
        out.append(f"| {s} | {_pm(a['macro'])} | [{fmt(low)}, {fmt(high)}] |"
                   + "".join(f" {_pm(a['groups'][g])} |" for g in groups))
    out += ["", "| system | " + " | ".join(langs) + " |", "|---|" + "---|" * len(langs)]
    for s in summary.systems:
        a = summary.aggregates[s]
        out.append(f"| {s} | " + " | ".join(_pm(a["languages"][l]) for l in langs) + " |")
    if summary.comparisons:
        conf = summary.comparisons[0].confidence
        out += ["", f"Claims: paired difference of macro CER (system − baseline; negative = system better) with a "
                f"{conf:.0%} bootstrap interval ({summary.n_boot} replicates; seeds, then languages, then "
                "utterances resampled).", "",
                "| claim | languages | difference | interval | verdict |", "|---|---|---|---|---|"]
        for c in summary.comparisons:
            scope = "all" if c.scope == "all" else f"{c.scope}: {', '.join(c.languages)}"
            out.append(f"| {c.claim} | {scope} | {c.difference:+.4f} | [{c.low:+.4f}, {c.high:+.4f}] "
                       f"| {c.verdict} |")
    return "\n".join(out + superb_markdown(summary))


def superb_markdown(summary: SeedSummary) -> list[str]:
    """ML-SUPERB 2.0's figures per system and the claims judged on them."""
    if not summary.superb:
        return []
    out = ["", "ML-SUPERB 2.0 figures: the worst language's CER and the standard deviation of CER across the "
           "languages (population), each per seed, then the mean over seeds, with a 95 % interval (seeds and "
           "utterances resampled; the languages are kept, since the figure is about these languages).", "",
           "| system | macro CER | worst-language CER | worst language (per seed) | CER std across languages |",
           "|---|---|---|---|---|"]
    for s in summary.systems:
        macro, f = summary.macro_intervals[s], summary.superb[s]
        worst_of = ", ".join(summary.aggregates[s].get("worst_language", []))
        out.append(f"| {s} | {_iv(macro)} | {_iv(f['worst'])} | {worst_of} | {_iv(f['spread'])} |")
    if summary.superb_comparisons:
        out += ["", "Claims judged on them (paired difference system − baseline; negative = system better):", "",
                "| claim | figure | difference | interval | verdict |", "|---|---|---|---|---|"]
        for c in summary.superb_comparisons:
            out.append(f"| {c.claim} | {SUPERB_NAMES[c.statistic]} | {c.difference:+.4f} "
                       f"| [{c.low:+.4f}, {c.high:+.4f}] | {c.verdict} |")
    return out


def _iv(values) -> str:
    mean, low, high = values
    return f"{fmt(mean)} [{fmt(low)}, {fmt(high)}]"


def _write(summary: SeedSummary, out_dir: Path, plots: bool) -> dict[str, str]:
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {"markdown": str(out_dir / "seeds_summary.md"), "json": str(out_dir / "seeds_summary.json")}
    if plots:
        files["cer_by_language"] = plot_cer_by_language(summary.intervals, summary.languages,
                                                        out_dir / "cer_by_language.png")
    atomic_write(files["markdown"], summary.markdown + "\n")
    write_json(summary.as_dict() | {"files": files}, files["json"])
    return files


def sweep_rows(points: Mapping[tuple[str, float], SeedSummary], system: str = "lasp") -> list[dict]:
    """Rows for :func:`lasp.analysis.plots.plot_cer_vs_sparsity`: one per (method, sparsity) summary, holding
    ``system``'s macro CER (mean over seeds) and its bootstrap interval."""
    rows = []
    for (method, sparsity), summary in points.items():
        if system not in summary.macro_intervals:
            raise ConfigError(f"sweep point {method} at sparsity {sparsity}: no {system!r} system in its runs")
        mean, low, high = summary.macro_intervals[system]
        rows.append({"method": method, "sparsity": float(sparsity), "cer": mean, "low": low, "high": high})
    return rows
