"""The report of a run over several base strengths (``run.strengths``): does the verdict move with the base?

Per strength it gathers what each strength's own run wrote: the base model's pre-training loss at that step (from
the base run's metrics.jsonl), each mask search's language signal against its repeat (``language_signal.json``,
:mod:`lasp.run.signal`) and how shared its masks are (IoU / random), and every system's macro CER with each masked
system's paired difference to the random masks (the hierarchical bootstrap of :mod:`lasp.analysis.stats`). It
writes ``scaling.json``, ``scaling.png`` (signal and difference to random against the base's steps, one line per
mask set and preset) and the report at ``run.report``.
"""
from __future__ import annotations

import math
from pathlib import Path

from lasp.analysis.overlap import compute_overlap, specificity
from lasp.analysis.plots import plot_against_strength
from lasp.analysis.seeds import SUPERB_FIGURES, SUPERB_NAMES, seed_summary
from lasp.analysis.stability import signal_interval
from lasp.analysis.tables import write_json
from lasp.config.schema import RecipeConfig, RunConfig
from lasp.io import atomic_write, read_json_if_present
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.store import CONFIG_NAME
from lasp.run.report import format_figure
from lasp.run.seeds import report_link
from lasp.run.signal import SIGNAL_FILE, searched_mask_sets
from lasp.run.strengths import Comparison
from lasp.train.metrics_log import read_metrics

BASELINE = "random"


def base_loss(run_dir: Path, steps: int, window: float = 0.1) -> float:
    """Mean logged pre-training loss of a base run over its last ``window`` of steps up to ``steps`` (a resumed
    run may log a step twice: the last record counts)."""
    by_step = {r["step"]: r["loss"] for r in read_metrics(run_dir)
               if r.get("kind") == "train" and isinstance(r.get("loss"), (int, float))}
    lo = steps - max(1, int(window * steps))
    values = [v for s, v in by_step.items() if lo < s <= steps and math.isfinite(v)]
    return sum(values) / len(values) if values else math.nan


def _masked(group: Comparison) -> list[str]:
    """The masked systems of a strength: lasp and every lasp variant (all compared with the random masks)."""
    settings = group.cfg.run
    return ([s for s in settings.systems if s == "lasp"]
            + [v.name for v in settings.variants if v.system == "lasp"])


def strength_row(group: Comparison, stage_cfgs: list[RecipeConfig]) -> dict:
    """Everything the scaling report says about one strength, from the files its run wrote."""
    settings = group.cfg.run
    run_dirs = [Path(c.output_dir) for c in group.seed_cfgs]
    seeds = [c.seed for c in group.seed_cfgs]
    losses = [base_loss(Path(c.model.name).parent, group.steps) for c in group.seed_cfgs]
    systems, done = group.systems(), group.evaluated()
    row = {"strength": group.name, "preset": group.preset, "steps": group.steps, "seeds": seeds,
           "evaluated": [len(done), len(systems)], "base_loss": _mean(losses), "base_loss_per_seed": losses,
           "masks": {}, "cer": {}, "vs_random": {}}
    for name, _ in searched_mask_sets(run_dirs[0], stage_cfgs[0], settings):
        signals, ratios = [], []
        for run_dir, stage_cfg in zip(run_dirs, stage_cfgs):
            folder = dict(searched_mask_sets(run_dir, stage_cfg, settings))[name]
            found = read_json_if_present(run_dir / SIGNAL_FILE).get(name)
            if found:
                signals.append(found["signal"])
            if (folder / CONFIG_NAME).is_file():
                ratios.append(specificity(compute_overlap(LanguageMasks.load(folder)))["iou_ratio"])
        mean, low, high = signal_interval(signals)
        row["masks"][name] = {"signal": [mean, low, high], "seeds_with_signal": len(signals),
                              "iou_ratio": _mean(ratios)}
    if done:
        masked = [s for s in _masked(group) if s in done]
        claims = [(s, BASELINE, f"{s} − {BASELINE}") for s in masked] if BASELINE in done else []
        summary = seed_summary(run_dirs, systems=done, claims=claims, n_boot=2000, plots=False)
        row["cer"] = {s: list(summary.macro_intervals[s]) for s in done}
        row["vs_random"] = {c.system: [c.difference, c.low, c.high, c.verdict] for c in summary.comparisons
                            if c.scope == "all"}
        row["superb"] = {stat: {s: list(summary.superb[s][stat]) for s in done} for stat in SUPERB_FIGURES}
        row["superb_vs_random"] = {stat: {c.system: [c.difference, c.low, c.high, c.verdict]
                                          for c in summary.superb_comparisons
                                          if c.scope == "all" and c.statistic == stat}
                                   for stat in SUPERB_FIGURES}
    return row


def error_table(rows: list[dict], stat: str | None, title: str, systems: list[str], masked: list[str]) -> list[str]:
    """One table of the report: ``stat`` ("worst", "spread"; None = macro CER) per strength and system, and each
    masked system's paired difference to the random masks on it."""
    lines = [f"**{title}**", "",
             "| strength | " + " | ".join(systems) + " | " + " | ".join(f"{s} − {BASELINE}" for s in masked) + " |",
             "|---|" + "---|" * (len(systems) + len(masked))]
    for r in rows:
        values = r["cer"] if stat is None else r.get("superb", {}).get(stat, {})
        diffs = r["vs_random"] if stat is None else r.get("superb_vs_random", {}).get(stat, {})
        cells = [_iv(values.get(s), sign=False) for s in systems]
        cells += [(_iv(diffs[s][:3]) + ("" if diffs[s][3].startswith("no") else f" **{diffs[s][3].split(',')[0]}**"))
                  if s in diffs else "–" for s in masked]
        lines.append(f"| {r['strength']} | " + " | ".join(cells) + " |")
    return lines + [""]


def _finished(row: dict) -> bool:
    return row["evaluated"][0] == row["evaluated"][1]


def _mean(values: list[float]) -> float:
    finite = [v for v in values if isinstance(v, (int, float)) and math.isfinite(v)]
    return sum(finite) / len(finite) if finite else math.nan


def _iv(values: list | None, sign: bool = True) -> str:
    if not values or any(isinstance(v, float) and math.isnan(v) for v in values[:3]):
        return "–"
    f = "{:+.3f}" if sign else "{:.3f}"
    return f"{f.format(values[0])} [{f.format(values[1])}, {f.format(values[2])}]"


def scaling_report(cfg: RecipeConfig, settings: RunConfig, prepared: list[tuple[Comparison, list]],
                   wall_total: float | None = None) -> Path:
    """The scaling report (module docstring); returns its path."""
    report = Path(settings.report)
    out = report.parent
    rows = [strength_row(group, stage_cfgs) for group, stage_cfgs in prepared]
    mask_sets = list(dict.fromkeys(m for r in rows for m in r["masks"]))
    systems = list(dict.fromkeys(s for r in rows for s in r["cer"]))
    masked = list(dict.fromkeys(s for r in rows for s in r["vs_random"]))
    panels = {"language signal (mask vs its repeat − vs other languages)": {},
              f"macro CER difference to {BASELINE} masks": {}}
    for r in rows:
        for m in mask_sets:
            if m in r["masks"] and not math.isnan(r["masks"][m]["signal"][0]):
                panels["language signal (mask vs its repeat − vs other languages)"].setdefault(
                    f"{m} ({r['preset']})", []).append((r["steps"], *r["masks"][m]["signal"]))
        for s, (diff, low, high, _) in r["vs_random"].items():
            panels[f"macro CER difference to {BASELINE} masks"].setdefault(f"{s} ({r['preset']})", []).append(
                (r["steps"], diff, low, high))
    figure = plot_against_strength(panels, "base model pre-training steps (log scale)", out / "scaling.png")
    write_json({"strengths": rows}, out / "scaling.json")
    seeds = ", ".join(str(s) for s in rows[0]["seeds"]) if rows else "–"
    parts = ["# Does the verdict move with the base model's strength?", "",
             f"One comparison per base strength ({', '.join(settings.strengths)}), each over seeds {seeds}: the "
             "preset pre-trained shared on the run's corpus for that many steps is the base; masks are searched on "
             "it and every system starts from it. Each strength's own report (per-language CER, ML-SUPERB 2.0 "
             "figures, ablations, mask specificity) is linked in the first column.", "",
             "## What the masks carry", "",
             "Language signal: a mask search against a repeat on other batches (IoU with the own repeat − IoU with "
             "the other languages'; 0 = search noise), mean over seeds and languages [95 % interval]. IoU / random: "
             "mean pairwise IoU of the languages' masks over what random masks of the same density give.", "",
             "| strength | base steps | base pre-training loss | "
             + " | ".join(f"{m}: signal | {m}: IoU / random" for m in mask_sets) + " |",
             "|---|---|---|" + "---|---|" * len(mask_sets)]
    for r in rows:
        link = (f"[{r['strength']}]({report_link(out / r['strength'] / 'report.md', report)})"
                if _finished(r) else f"{r['strength']} (running: {r['evaluated'][0]} of {r['evaluated'][1]} "
                "systems evaluated)")
        cells = [f"{_iv(r['masks'][m]['signal'])} | {format_figure(r['masks'][m]['iou_ratio'], 2)}"
                 if m in r["masks"] else "– | –" for m in mask_sets]
        parts.append(f"| {link} | {r['steps']} | {format_figure(r['base_loss'])} | " + " | ".join(cells) + " |")
    parts += ["", "## Error rates", "",
              "Per strength, each system's CER figure (mean over seeds [95 % interval]) and each masked system's "
              f"paired difference to the {BASELINE} masks of the same density (negative = the searched masks are "
              "better), with the hierarchical bootstrap interval over seeds, languages and utterances: macro CER, "
              "then ML-SUPERB 2.0's worst language's CER and CER standard deviation across languages.", ""]
    for title, stat in (("Macro CER", None), *((SUPERB_NAMES[f][0].upper() + SUPERB_NAMES[f][1:], f)
                                               for f in SUPERB_FIGURES)):
        parts += error_table(rows, stat, title, systems, masked)
    parts += [f"![signal and difference to random masks against the base's steps]({report_link(figure, report)})",
              "", f"The numbers: `{report_link(out / 'scaling.json', report)}`.", ""]
    if wall_total is not None:
        parts += [f"Total wall time of this `lasp run` invocation: {wall_total / 60:.1f} min.", ""]
    atomic_write(report, "\n".join(parts))
    return report
