"""The report of a `lasp run` (one seed's, and the multi-seed one): per-language CER/WER of every system, what
was scored, cost, overlap.

Reads only the recipe and what the stages wrote (``eval-*/results.json``, ``*/final/train_summary.json``, the
corpus manifests, the mask set), so it can be regenerated at any time with ``lasp report RECIPE``. Every sentence
about the setup comes from those: which corpus, which base model, how many seeds.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from lasp.analysis import format_markdown, overlap_analysis, parameter_table
from lasp.config.schema import RecipeConfig, RunConfig
from lasp.io import atomic_write, read_json_if_present
from lasp.masks.language_masks import LanguageMasks
from lasp.run.inputs import base_is_checkpoint, corpus_kind
from lasp.run.seeds import report_link, specificity_rows, spread_sentence, variants_section
from lasp.run.signal import SIGNAL_FILE, signal_rows

SYSTEM_NOTES = {
    "shared": "one model, every language updates every weight",
    "lasp": "importance masks: each language trains only its sub-network",
    "random": "random masks with the lasp masks' per-tensor density (control)",
    "adapters": "MMS-style per-language adapters on the shared model",
}


def format_figure(value, digits: int = 3) -> str:
    """A figure of a report table; "–" for one not measured (None or nan)."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def results_table(out: Path, systems: list[str], languages: list[str]) -> tuple[str, dict[str, dict]]:
    results = {s: read_json_if_present(out / f"eval-{s}" / "results.json") for s in systems}
    header = ("| system | " + " | ".join(f"{l} CER / WER" for l in languages)
              + " | **macro CER** | macro WER | worst-language CER | CER std across languages |")
    lines = [header, "|" + "---|" * (len(languages) + 5)]
    for s in systems:
        r = results[s]
        if not r:
            lines.append(f"| {s} | " + " | ".join("–" for _ in languages) + " | – | – | – | – |")
            continue
        cells = []
        for lang in languages:
            m = r["languages"].get(lang)
            cells.append(f"{format_figure(m['cer'])} / {format_figure(m['wer'])}" if m else "–")
        # ML-SUPERB 2.0's figures beside the mean: the worst language, and the population std over the languages
        cers = [r["languages"][lang]["cer"] for lang in languages if lang in r["languages"]]
        worst = max(cers) if cers else None
        worst_lang = next((lang for lang in languages if lang in r["languages"]
                           and r["languages"][lang]["cer"] == worst), "")
        spread = float(np.std(cers)) if cers else None
        lines.append(f"| {s} | " + " | ".join(cells)
                     + f" | **{format_figure(r['macro']['cer'])}** | {format_figure(r['macro']['wer'])} | {format_figure(worst)} ({worst_lang}) "
                       f"| {format_figure(spread)} |")
    return "\n".join(lines), results


def training_table(out: Path, systems: list[str], stage_times: dict) -> str:
    lines = ["| system | pre-training steps | pre-training time | fine-tuning steps | fine-tuning time "
             "| stopped by | trainable parameters (fine-tuning) |", "|---|---|---|---|---|---|---|"]
    ft_steps = {}
    for s in systems:
        pre = read_json_if_present(out / f"pretrain-{s}" / "final" / "train_summary.json")
        ft = read_json_if_present(out / f"finetune-{s}" / "final" / "train_summary.json")
        if "step" in ft:
            ft_steps[s] = ft["step"]

        def t(summary: dict) -> str:
            return f"{summary['elapsed_s']:.0f} s" if "elapsed_s" in summary else "–"

        trainable = ft.get("trainable_parameters")
        lines.append(f"| {s} | {pre.get('step', '–')} | {t(pre)} | {ft.get('step', '–')} | {t(ft)} "
                     f"| {ft.get('stopped_by', '–')} | {f'{trainable:,}' if trainable else '–'} |")
    if len(set(ft_steps.values())) == 1:
        lines.append(f"\nEvery system was fine-tuned for the same {next(iter(ft_steps.values()))} steps on the same "
                     "batches from the same seed.")
    elif ft_steps:
        lines.append("\nFine-tuning step counts differ between systems (a wall-time budget stopped them), so the "
                     "comparison is at equal wall time, not equal steps.")
    base = read_json_if_present(out / "base" / "final" / "train_summary.json")
    if base:
        lines.append(f"\nBase model (shared pre-training of the preset): {base.get('step')} steps in "
                     f"{base.get('elapsed_s', 0):.0f} s.")
    if stage_times:
        slowest = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(stage_times.items()))
        lines.append(f"\nWall time per stage process: {slowest}.")
    return "\n".join(lines)


def corpus_sentence(settings: RunConfig, manifests: dict[str, str]) -> str:
    langs = ", ".join(settings.languages)
    if corpus_kind(settings.corpus) == "synthetic":
        low = (f"; low-resource: {', '.join(settings.low_resource)} at 1/{settings.low_factor:g}"
               if settings.low_resource else "")
        return (f"Languages: {langs}. Corpus: synthesized by lasp at `{settings.corpus}` (espeak-ng speech of "
                f"word-frequency sentences, {settings.train_utterances} training and {settings.test_utterances} test "
                f"utterances per language{low}).")
    counts = {split: _language_counts(path) for split, path in manifests.items() if path}
    per_lang = "; ".join(f"{lang} {counts.get('train', {}).get(lang, 0)} / {counts.get('test', {}).get(lang, 0)}"
                         for lang in settings.languages)
    return (f"Languages: {langs}. Corpus: the manifests in `{settings.corpus}` (used read-only); training / test "
            f"utterances listed per language: {per_lang}.")


def model_sentence(cfg: RecipeConfig, out: Path) -> str:
    if base_is_checkpoint(cfg):
        return (f"Base model: the checkpoint `{cfg.model.name}`; masks are searched on it and every system starts "
                "from it.")
    base = read_json_if_present(out / "base" / "final" / "train_summary.json")
    return (f"Base model: the `{cfg.model.name}` preset (random initial weights), pre-trained shared on this corpus "
            f"for {base.get('step', '–')} steps to stand in for a pre-trained multilingual model; at this scale the "
            "numbers show the method's mechanics, not the paper's results.")


def mask_sentence(cfg: RecipeConfig) -> str:
    m = cfg.masks
    how = {"oneshot": f"{m.scorer} scores of the pre-training loss on the base model",
           "imp": f"iterative magnitude pruning with rewinding ({m.imp_rounds} rounds of {m.imp_steps} steps)",
           "lass": f"LaSS-style search ({m.lass_steps} adaptation steps per language from the base model, pruned "
                   f"by {'|W_lang − W_base|' if m.lass_criterion == 'change' else '|W_lang|'})"}[m.method]
    return (f"Masks: {how}, {m.sparsity:g} sparsity ({m.scope}, {m.pattern}); random masks copy their per-tensor "
            "density.")


def noise_sentence(cfg: RecipeConfig, settings: RunConfig, seeds_of: RunConfig | None = None) -> str:
    """One seed's report: where the seed-to-seed spread comes from (this run's other seeds, a benchmark named by
    run.spread_from, or nowhere: then it says none was measured)."""
    if seeds_of is not None:
        return (f"Seed {cfg.seed} of a run over seeds {', '.join(map(str, seeds_of.seeds))}: the spread across "
                f"seeds, intervals and verdicts are in `{seeds_of.report}`.")
    return spread_sentence(cfg, settings)


def coverage_section(results: dict[str, dict], manifests: dict[str, str], languages: list[str]) -> list[str]:
    """Per language: test utterances listed, scored by each system, and the ones that could not be read (why)."""
    listed = _language_counts(manifests.get("test"))
    systems = [s for s, r in results.items() if r]
    if not systems:
        return []
    lines = ["## What was scored", "",
             "| language | test utterances listed | " + " | ".join(f"scored ({s})" for s in systems) + " |",
             "|---|---|" + "---|" * len(systems)]
    unreadable: dict[str, dict[str, dict]] = {}
    for lang in languages:
        cells = []
        for s in systems:
            m = results[s]["languages"].get(lang) or {}
            cells.append(str(m["utterances"]) if "utterances" in m else "not reported")
            for row in m.get("unreadable") or []:
                unreadable.setdefault(lang, {}).setdefault(str(row.get("id")), row)
        lines.append(f"| {lang} | {listed.get(lang, '–')} | " + " | ".join(cells) + " |")
    lines.append("")
    unaccounted = []  # listed but neither scored nor reported unreadable: the error rates leave them out silently
    for s in systems:
        for lang in languages:
            m = results[s]["languages"].get(lang) or {}
            if "utterances" in m and lang in listed:
                gap = listed[lang] - m["utterances"] - len(m.get("unreadable") or [])
                if gap:
                    unaccounted.append(f"{s} {lang}: {gap}")
    if unaccounted:
        lines += ["Listed test utterances neither scored nor reported unreadable (missing from the error rates): "
                  + ", ".join(unaccounted) + ".", ""]
    if unreadable:
        lines += ["Test utterances that could not be read (not scored):", ""]
        for lang in languages:
            for uid, row in unreadable.get(lang, {}).items():
                lines.append(f"- {lang} `{uid}` ({row.get('audio', '?')}): {row.get('reason', 'no reason given')}")
    elif not unaccounted and all("unreadable" in (results[s]["languages"].get(l) or {})
                                 for s in systems for l in languages):
        lines.append("Every listed test utterance could be read.")
    else:
        lines.append("The evaluation did not report unreadable utterances.")
    return lines + [""]


def _language_counts(manifest: str | None) -> dict[str, int]:
    counts: dict[str, int] = {}
    if not manifest:
        return counts
    try:
        with open(manifest, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    lang = json.loads(line).get("lang")
                    counts[lang] = counts.get(lang, 0) + 1
    except (OSError, json.JSONDecodeError, AttributeError):
        return {}
    return counts


def write_report(cfg: RecipeConfig, settings: RunConfig, out: Path, wall_total: float | None = None, *,
                 seeds_of: RunConfig | None = None, summary=None) -> Path:
    """The report of one seed's run. ``seeds_of``: the multi-seed run's settings when this is one of its seeds;
    ``summary``: a seed summary of this run (with run.variants) whose intervals and ablation table are added."""
    out = Path(out)
    systems, languages = list(settings.systems), list(settings.languages)
    report = Path(settings.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    stage_times = read_json_if_present(out / "stage_times.json")
    manifests = {"train": cfg.data.train, "test": cfg.data.test}
    table, results = results_table(out, systems, languages)
    parts = [
        "# lasp run: language-adaptive sparse sub-networks vs shared, random masks and adapters",
        "",
        corpus_sentence(settings, manifests),
        model_sentence(cfg, out),
        mask_sentence(cfg),
        noise_sentence(cfg, settings, seeds_of),
        "",
        f"## Character and word error rates (greedy CTC decoding, {cfg.evaluate.split} split)",
        "",
        table,
        "",
    ]
    macro = {s: r["macro"]["cer"] for s, r in results.items() if r}
    if "shared" in macro:
        lines = []
        for s in (x for x in systems if x != "shared" and x in macro):
            gap = macro["shared"] - macro[s]
            lines.append(f"- {s}: macro CER {macro[s]:.3f}, {abs(gap):.3f} {'below' if gap > 0 else 'above'} "
                         f"shared ({macro['shared']:.3f})")
        parts += ["Against the shared model:", "", *lines, ""]
    if summary is not None:
        parts += ["## Intervals (one seed: utterances and languages resampled)", "", summary.markdown, ""]
        parts += variants_section(summary, cfg, settings, report)
        parts += specificity_rows([out], [cfg], settings)
    parts += signal_rows([read_json_if_present(out / SIGNAL_FILE)], [cfg.seed])
    parts += coverage_section(results, manifests, languages)
    parts += ["## Training", "", training_table(out, systems, stage_times), ""]
    if wall_total is not None:
        parts += [f"Total wall time of this `lasp run` invocation: {wall_total / 60:.1f} min.", ""]
    notes = dict(SYSTEM_NOTES)
    notes["adapters"] += (" (base frozen: only adapters and the CTC head train, as in MMS)" if cfg.adapters.freeze_base
                          else " (base model trained too: adapters.freeze_base is false)")
    parts += ["Systems:", ""] + [f"- **{s}**: {notes[s]}" for s in systems] + [""]
    if cfg.finetune.export_languages:
        parts += ["Each fine-tuned system's `final/<lang>/` folder is a plain Wav2Vec2ForCTC with its processor "
                  "(`transformers.pipeline(\"automatic-speech-recognition\", model=...)` loads it); see `lasp "
                  "export`.", ""]
    else:
        parts += ["`lasp export RUN --lang X --out DIR` writes any language of a fine-tuned system as a plain "
                  "Wav2Vec2ForCTC with its processor (`transformers.pipeline(\"automatic-speech-recognition\", "
                  "model=DIR)` loads it).", ""]

    mask_dir = Path(cfg.masks.dir) if cfg.masks.dir else out / "masks-lasp"
    if (mask_dir / "mask_config.json").is_file():
        masks = LanguageMasks.load(mask_dir)
        overlap = overlap_analysis(masks, out_dir=out / "overlap", n_permutations=200)
        heatmap = report_link(overlap.files["iou_heatmap"], report)
        parts += ["## How much the language sub-networks share", "",
                  f"![pairwise IoU of the lasp masks]({heatmap})", "",
                  "```", overlap.summary.strip(), "```", ""]
        rows = parameter_table(cfg.model.name, len(languages), masks=masks,
                               adapter_dims=(cfg.adapters.dim,), lora_ranks=(8,))
        parts += ["## Parameters per language", "", format_markdown(rows), ""]
    atomic_write(report, "\n".join(parts))
    return report


def seeds_report(cfg: RecipeConfig, settings: RunConfig, summary, seed_cfgs: list[RecipeConfig],
                 stage_cfgs: list[RecipeConfig], wall_total: float | None) -> Path:
    """The report of a multi-seed run: the summary with intervals and verdicts, the ablations, per-seed reports."""
    run_dirs = [Path(c.output_dir) for c in seed_cfgs]
    report = Path(settings.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    first = stage_cfgs[0]
    seeds = ", ".join(str(c.seed) for c in stage_cfgs)
    parts = ["# lasp run over several seeds: language-adaptive sparse sub-networks vs shared, random masks and "
             "adapters", "",
             f"Seed {first.seed}: " + corpus_sentence(seed_cfgs[0].run, {"train": first.data.train,
                                                                         "test": first.data.test}),
             model_sentence(first, run_dirs[0]),
             mask_sentence(first),
             f"Seeds: {len(run_dirs)} ({seeds}); each seed draws its own corpus (when lasp synthesizes it), base "
             "model, masks and training batches. Per-seed reports: "
             + ", ".join(f"[seed {c.seed}]({report_link(Path(d) / 'report.md', report)})"
                         for c, d in zip(stage_cfgs, run_dirs))
             + ".", "",
             f"## Character error rates across seeds ({cfg.evaluate.split} split)", "",
             summary.markdown, ""]
    if "cer_by_language" in summary.files:
        figure = report_link(summary.files["cer_by_language"], report)
        parts += [f"![CER per language with 95 % intervals]({figure})", ""]
    parts += variants_section(summary, first, settings, report)
    parts += specificity_rows(run_dirs, stage_cfgs, settings)
    parts += signal_rows([read_json_if_present(d / SIGNAL_FILE) for d in run_dirs], [c.seed for c in stage_cfgs])
    parts += [f"The numbers: `{report_link(summary.files['json'], report)}` (the seed-to-seed spread a single-seed "
              "report quotes with run.spread_from).", ""]
    if wall_total is not None:
        parts += [f"Total wall time of this `lasp run` invocation: {wall_total / 60:.1f} min.", ""]
    atomic_write(report, "\n".join(parts))
    return report
