"""Several seeds and ablations in one `lasp run`: per-seed recipes, the multi-seed summary, the report sections
built from it (ablation table, mask specificity) and the seed-to-seed spread a single-seed report quotes.

With ``run.seeds: [0, 1, 2]`` every seed is a complete run in ``<output_dir>/seed-<s>``: its own corpus draw
(a synthesized corpus goes to ``<run.corpus>/seed-<s>``; a user corpus is shared, read-only), base model,
masks and training. :func:`lasp.analysis.seeds.seed_summary` then reads the seeds' evaluations and tests the
claims with paired bootstrap intervals; ``run.variants`` add one line each to the tables and a point each to
the CER-vs-sparsity plot.
"""
from __future__ import annotations

import json
import math
from dataclasses import replace
from pathlib import Path

from lasp.analysis.overlap import compute_overlap, specificity
from lasp.analysis.plots import plot_cer_vs_sparsity
from lasp.analysis.seeds import CLAIMS, seed_summary
from lasp.config.schema import RecipeConfig, RunConfig, VariantConfig
from lasp.errors import ConfigError
from lasp.masks.language_masks import LanguageMasks
from lasp.run.inputs import corpus_kind
from lasp.run.variants import label, pretrains, variant_config


def seed_configs(cfg: RecipeConfig, settings: RunConfig) -> list[RecipeConfig]:
    """One recipe per seed. Zero or one seed: the recipe itself (today's layout in output_dir)."""
    if len(settings.seeds) <= 1:
        return [replace(cfg, seed=settings.seeds[0]) if settings.seeds else cfg]
    out = Path(cfg.output_dir)
    if cfg.masks.dir and not Path(cfg.masks.dir).resolve().is_relative_to(out.resolve()):
        raise ConfigError(f"masks.dir: {cfg.masks.dir} is outside output_dir {cfg.output_dir}; with several "
                          "run.seeds every seed searches its own masks in <output_dir>/seed-<s> (set masks.dir "
                          "inside output_dir, or null)")
    # a corpus that exists (whoever made it) is read as it is by every seed; else each seed synthesizes its own
    shared_corpus = corpus_kind(settings.corpus) != "empty"
    configs = []
    for seed in settings.seeds:
        sdir = out / f"seed-{seed}"
        corpus = settings.corpus if shared_corpus else str(Path(settings.corpus) / f"seed-{seed}")
        sset = replace(settings, corpus=corpus, report=str(sdir / "report.md"), seeds=[], spread_from=None)
        masks = replace(cfg.masks, dir=str(sdir / "masks-lasp"))
        configs.append(replace(cfg, seed=seed, output_dir=str(sdir), masks=masks, run=sset))
    return configs


def reference(variant: VariantConfig, systems: list[str]) -> str | None:
    """What a variant is compared with: the lasp system, or for an adapter variant the adapters system."""
    wanted = "adapters" if variant.system == "adapters" else "lasp"
    return wanted if wanted in systems else None


def summary_claims(systems: list[str], variants: list[VariantConfig]) -> tuple:
    """The standard claims, and each variant against its reference (what the ablation changes)."""
    return CLAIMS + tuple((v.name, ref, f"{v.name} vs {ref}") for v in variants
                          if (ref := reference(v, systems)) is not None)


def evaluated_systems(settings: RunConfig) -> list[str]:
    """Every system a run evaluates: its systems, then its variants."""
    return list(settings.systems) + [v.name for v in settings.variants]


def summarize(run_dirs: list[Path], settings: RunConfig, out_dir: Path):
    """seed_summary over the runs' systems and variants, written to ``out_dir``."""
    return seed_summary(run_dirs, systems=evaluated_systems(settings),
                        claims=summary_claims(list(settings.systems), settings.variants), out_dir=out_dir)


def report_link(path: str | Path, report: Path) -> str:
    """``path`` as a report links it: relative to the report's folder when inside it."""
    path, base = Path(path).resolve(), report.parent.resolve()
    return str(path.relative_to(base)) if path.is_relative_to(base) else str(path)


def variants_section(summary, stage_cfg: RecipeConfig, settings: RunConfig, report: Path) -> list[str]:
    """The ablation table (one row per variant, the lasp system first) and the CER-vs-sparsity plot."""
    variants = settings.variants
    if not variants:
        return []
    rows, points = [], []
    refs = {v.name: reference(v, list(settings.systems)) for v in variants}
    vs = {c.system: c for c in summary.comparisons
          if c.scope == "all" and c.baseline == refs.get(c.system, "lasp")}
    entries = [("lasp", stage_cfg, None)] if "lasp" in summary.systems else []
    entries += [(v.name, variant_config(stage_cfg, v), v) for v in variants]
    for name, vcfg, variant in entries:
        mean, low, high = summary.macro_intervals[name]
        agg = summary.aggregates[name]["macro"]
        c = vs.get(name)
        diff = f"{c.baseline}: {c.difference:+.4f} [{c.low:+.4f}, {c.high:+.4f}] {c.verdict}" if c else "–"
        masked = variant is None or variant.system == "lasp"
        pretrain = "yes" if variant is None or pretrains(variant) else "no"
        sparsity = f"{vcfg.masks.sparsity:g}" if masked else "–"
        rows.append(f"| {name} | {label(vcfg, variant)} | {sparsity} | {pretrain} "
                    f"| {agg['mean']:.3f} ± {_std(agg['std'])} | [{low:.3f}, {high:.3f}] | {diff} |")
        if masked:  # adapters have no sparsity: the table has them, the plot does not
            points.append({"method": label(vcfg, variant, say_pretraining=True), "sparsity": vcfg.masks.sparsity,
                           "cer": mean, "low": low, "high": high})
    plot = plot_cer_vs_sparsity(points, Path(summary.files.get("json", report)).parent / "cer_vs_sparsity.png")
    return ["## Ablations (run.variants)", "",
            "Each variant is a lasp system (or, where the setting says adapters, the adapter baseline) on the "
            "same base model with the recipe overrides it names; 'vs reference' is the paired difference of macro "
            "CER (variant − reference: the lasp system, or the adapters system for an adapter variant) with its "
            "95 % bootstrap interval.", "",
            "| variant | setting | sparsity | pre-training | macro CER | 95 % interval | vs reference |",
            "|---|---|---|---|---|---|---|", *rows, "",
            f"![macro CER vs sparsity per mask search]({report_link(plot, report)})", ""]


def _std(value: float) -> str:
    return "–" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.3f}"


def specificity_rows(run_dirs: list[Path], stage_cfgs: list[RecipeConfig], settings: RunConfig) -> list[str]:
    """Per mask set (lasp, and every variant with masks of its own): how language-specific, mean over seeds."""
    names = [("lasp", "masks-lasp")] + [(v.name, f"masks-{v.name}") for v in settings.variants]
    lines = []
    for name, folder in names:
        figures = []
        for run_dir, scfg in zip(run_dirs, stage_cfgs):
            path = Path(scfg.masks.dir) if name == "lasp" and scfg.masks.dir else Path(run_dir) / folder
            if (path / "mask_config.json").is_file():
                figures.append(specificity(compute_overlap(LanguageMasks.load(path))))
        if figures:
            ratio = sum(f["iou_ratio"] for f in figures) / len(figures)
            unique = sum(f["mean_unique_share"] for f in figures) / len(figures)
            rnd = sum(f["mean_random_unique_share"] for f in figures) / len(figures)
            lines.append(f"| {name} | {ratio:.2f} | {unique:.3f} | {rnd:.3f} | {len(figures)} |")
    if not lines:
        return []
    return ["## How language-specific the masks are", "",
            "Mean pairwise IoU of the languages' masks divided by what random masks of the same per-tensor "
            "densities give (1 = chance; higher = more shared), and the share of a language's kept weights that no "
            "other language keeps; means over seeds. Variants that reuse the lasp masks are not listed.", "",
            "| mask set | IoU / random IoU | unique share | unique share, random masks | seeds |",
            "|---|---|---|---|---|", *lines, ""]


SHIPPED_BENCHMARK = "lasp:benchmark"
SHIPPED_SUMMARY = Path(__file__).resolve().parent.parent / "recipes" / "benchmark_summary.json"


def spread_source(value: str) -> tuple[Path, str, str]:
    """The seeds_summary.json that ``run.spread_from`` names, how a report cites it, and what it adds about it.
    ``lasp:benchmark`` is the summary of `lasp run recipes/benchmark.yaml` that ships with lasp (its numbers are
    in the README)."""
    if value == SHIPPED_BENCHMARK:
        return (SHIPPED_SUMMARY, "the benchmark shipped with lasp",
                "run.spread_from: lasp:benchmark; `lasp run recipes/benchmark.yaml` on a 2-core CPU machine; ")
    if value.startswith("lasp:"):
        raise ConfigError(f"run.spread_from: {value!r} is not a file; the only built-in summary is "
                          f"{SHIPPED_BENCHMARK!r}")
    return Path(value), f"the benchmark at `{value}`", ""


def spread_sentence(cfg: RecipeConfig, settings: RunConfig) -> str:
    """What a single-seed report says about noise: a benchmark's measured seed-to-seed spread, or that none was
    measured. Never a fixed number."""
    none = f"Seeds: one (seed {cfg.seed}), so no seed-to-seed spread was measured"
    if not settings.spread_from:
        return none + ": the differences below are not tested against noise."
    path, source, detail = spread_source(settings.spread_from)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
        macro = {s: a["macro"] for s, a in data["aggregates"].items()}
        seeds = data["seeds"]
    except FileNotFoundError:
        return (none + f" (there is no benchmark result at `{path}`, run.spread_from, yet: `lasp run "
                "recipes/benchmark.yaml` measures it): the differences below are not tested against noise.")
    except (OSError, ValueError, KeyError, TypeError, AttributeError) as exc:
        raise ConfigError(f"run.spread_from: {path} is not a seeds_summary.json ({exc})") from None
    stds = ", ".join(f"{s} {m['std']:.3f}" for s, m in macro.items()
                     if s in settings.systems and isinstance(m.get("std"), (int, float)) and not math.isnan(m["std"]))
    claims = [c for c in data.get("comparisons", []) if c.get("scope") == "all" and c.get("system") == "lasp"
              and c.get("baseline") in settings.systems]
    tested = "; ".join(f"{c['claim']} {c['difference']:+.3f} [{c['low']:+.3f}, {c['high']:+.3f}] ({c['verdict']})"
                       for c in claims)
    return (f"Seeds: one (seed {cfg.seed}); this run measures no spread itself, but {source} ({detail}"
            f"{len(seeds)} seeds, its own recipe and corpus) measured a standard deviation of macro CER across "
            f"seeds of {stds or 'nothing for these systems'}"
            + (f", with paired 95 % intervals {tested}" if tested else "")
            + ". Differences here smaller than that spread are not evidence of a difference.")
