"""The report of a `lasp run`: per-language CER/WER of every system, cost, overlap.

Reads only what the stages wrote (``eval-*/results.json``, ``*/final/train_summary.json``,
the mask set), so it can be regenerated at any time with ``lasp report RECIPE``.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

from lasp.config import RecipeConfig

# seed-to-seed spread of macro CER measured for the demo-sized systems
NOISE = 0.04

SYSTEM_NOTES = {
    "shared": "one model, every language updates every weight",
    "lasp": "importance masks: each language trains only its sub-network",
    "random": "random masks with the lasp masks' per-tensor density (control)",
    "adapters": "MMS-style per-language adapters on the shared model",
}


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None


def _fmt(value, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    return f"{value:.{digits}f}"


def results_table(out: Path, systems: list[str], languages: list[str]) -> tuple[str, dict[str, dict]]:
    results = {s: _read_json(out / f"eval-{s}" / "results.json") for s in systems}
    header = "| system | " + " | ".join(f"{l} CER / WER" for l in languages) + " | **macro CER** | macro WER |"
    lines = [header, "|" + "---|" * (len(languages) + 3)]
    for s in systems:
        r = results[s]
        if r is None:
            lines.append(f"| {s} | " + " | ".join("–" for _ in languages) + " | – | – |")
            continue
        cells = []
        for lang in languages:
            m = r["languages"].get(lang)
            cells.append(f"{_fmt(m['cer'])} / {_fmt(m['wer'])}" if m else "–")
        lines.append(f"| {s} | " + " | ".join(cells)
                     + f" | **{_fmt(r['macro']['cer'])}** | {_fmt(r['macro']['wer'])} |")
    return "\n".join(lines), results


def training_table(out: Path, systems: list[str], stage_times: dict) -> str:
    lines = ["| system | pre-training steps | pre-training time | fine-tuning steps | fine-tuning time "
             "| stopped by | trainable parameters (fine-tuning) |", "|---|---|---|---|---|---|---|"]
    ft_steps = {}
    for s in systems:
        pre = _read_json(out / f"pretrain-{s}" / "final" / "train_summary.json") or {}
        ft = _read_json(out / f"finetune-{s}" / "final" / "train_summary.json") or {}
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
    base = _read_json(out / "base" / "final" / "train_summary.json") or {}
    if base:
        lines.append(f"\nBase model (shared pre-training, the stand-in for XLSR): {base.get('step')} steps in "
                     f"{base.get('elapsed_s', 0):.0f} s.")
    if stage_times:
        slowest = ", ".join(f"{k} {v:.0f} s" for k, v in sorted(stage_times.items()))
        lines.append(f"\nWall time per stage process: {slowest}.")
    return "\n".join(lines)


def write_report(cfg: RecipeConfig, settings, out: Path, wall_total: float | None = None) -> Path:
    from lasp.analysis import format_markdown, overlap_analysis, parameter_table
    from lasp.masks import LanguageMasks

    out = Path(out)
    systems, languages = list(settings.systems), list(settings.languages)
    report = Path(settings.report)
    report.parent.mkdir(parents=True, exist_ok=True)
    stage_times = _read_json(out / "stage_times.json") or {}
    table, results = results_table(out, systems, languages)
    parts = [
        "# lasp run: language-adaptive sparse sub-networks vs shared, random masks and adapters",
        "",
        f"Languages: {', '.join(languages)} (offline espeak-ng corpus, {settings.train_utterances} training and "
        f"{settings.test_utterances} test utterances per language"
        + (f"; low-resource: {', '.join(settings.low_resource)} at 1/{settings.low_factor:g}"
           if settings.low_resource else "") + ").",
        f"Model: the `{cfg.model.name}` preset. Real XLSR-53 weights cannot be downloaded here, so a shared "
        "pre-training run of this preset on the same corpus stands in for XLSR; the numbers show the pipeline "
        "working end to end at toy scale, not the paper's results.",
        f"Masks: {cfg.masks.scorer} scores of the pre-training loss on the base model, {cfg.masks.sparsity:g} "
        f"sparsity ({cfg.masks.scope}, {cfg.masks.pattern}); random masks copy their per-tensor density.",
        "",
        "## Character and word error rates (greedy CTC decoding, test split)",
        "",
        table,
        "",
    ]
    macro = {s: r["macro"]["cer"] for s, r in results.items() if r}
    if "shared" in macro:
        lines = []
        for s in (x for x in systems if x != "shared" and x in macro):
            gap = macro["shared"] - macro[s]
            if abs(gap) <= NOISE:
                lines.append(f"- {s}: macro CER {macro[s]:.3f}, within noise of shared ({macro['shared']:.3f})")
            else:
                lines.append(f"- {s}: macro CER {macro[s]:.3f}, {abs(gap):.3f} {'below' if gap > 0 else 'above'} "
                             f"shared ({macro['shared']:.3f})")
        parts += [f"Against the shared model (gaps up to {NOISE} macro CER are within seed-to-seed variation "
                  "at this scale):", "", *lines, ""]
    parts += ["## Training", "", training_table(out, systems, stage_times), ""]
    if wall_total is not None:
        parts += [f"Total wall time of this `lasp run` invocation: {wall_total / 60:.1f} min.", ""]
    notes = dict(SYSTEM_NOTES)
    notes["adapters"] += (" (base frozen: only adapters and the CTC head train, as in MMS)" if cfg.adapters.freeze_base
                          else " (base model trained too: adapters.freeze_base is false)")
    parts += ["Systems:", ""] + [f"- **{s}**: {notes[s]}" for s in systems] + [""]

    mask_dir = Path(cfg.masks.dir) if cfg.masks.dir else out / "masks-lasp"
    if (mask_dir / "mask_config.json").is_file():
        masks = LanguageMasks.load(mask_dir)
        overlap = overlap_analysis(masks, out_dir=out / "overlap", n_permutations=200)
        heatmap = Path(overlap.files["iou_heatmap"])
        rel = heatmap.resolve().relative_to(report.parent.resolve()) if heatmap.resolve().is_relative_to(
            report.parent.resolve()) else heatmap.resolve()
        parts += ["## How much the language sub-networks share", "",
                  f"![pairwise IoU of the lasp masks]({rel})", "",
                  "```", overlap.summary.strip(), "```", ""]
        rows = parameter_table(cfg.model.name, len(languages), masks=masks,
                               adapter_dims=(cfg.adapters.dim,), lora_ranks=(8,))
        parts += ["## Parameters per language", "", format_markdown(rows), ""]
    report.write_text("\n".join(parts), encoding="utf-8")
    return report
