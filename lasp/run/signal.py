"""The repeat search of `lasp run` (``run.repeat_search``) and the language signal it measures.

A mask search scores a few batches per language, so a second search of the same languages on other batches gives
other masks. With ``run.repeat_search`` every mask set the run searches (the lasp masks, and each variant's own)
is searched again with the same settings and seed + :data:`REPEAT_SEED_OFFSET` (other batches, other time masks)
into ``<run>/repeat/masks-<name>``. :func:`lasp.analysis.stability.search_stability` then compares the two: a
language's signal is the IoU of its mask with its own repeat minus the mean IoU with the other languages'
repeats; 0 means the differences between the languages' masks are search noise. The figures of every mask set go
to ``<run>/language_signal.json`` and into the report.
"""
from __future__ import annotations

import math
from pathlib import Path

from lasp.analysis.stability import search_stability, signal_interval
from lasp.analysis.tables import write_json
from lasp.config.schema import RecipeConfig, RunConfig
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.store import CONFIG_NAME
from lasp.run.variants import reuses_lasp_masks, variant_config

REPEAT_SEED_OFFSET = 1000
SIGNAL_FILE = "language_signal.json"


def repeat_dir(out: Path, name: str) -> Path:
    """Where the repeat of mask set ``name`` (lasp, or a variant's name) is searched."""
    return Path(out) / "repeat" / f"masks-{name}"


def searched_mask_sets(out: Path, stage_cfg: RecipeConfig, settings: RunConfig) -> list[tuple[str, Path]]:
    """(name, folder) of every mask set a run searches: the lasp masks, then each lasp variant's own."""
    out = Path(out)
    sets = [("lasp", Path(stage_cfg.masks.dir) if stage_cfg.masks.dir else out / "masks-lasp")]
    for v in settings.variants:
        if v.system == "lasp" and not reuses_lasp_masks(v, stage_cfg, variant_config(stage_cfg, v)):
            sets.append((v.name, out / f"masks-{v.name}"))
    return sets


def write_signals(out: Path, stage_cfg: RecipeConfig, settings: RunConfig) -> dict[str, dict]:
    """Each searched mask set against its repeat (those both present), written to ``<out>/language_signal.json``."""
    signals = {}
    for name, folder in searched_mask_sets(out, stage_cfg, settings):
        repeat = repeat_dir(out, name)
        if (folder / CONFIG_NAME).is_file() and (repeat / CONFIG_NAME).is_file():
            signals[name] = {"masks": str(folder), "repeat": str(repeat),
                             **search_stability(LanguageMasks.load(folder), LanguageMasks.load(repeat))}
    if signals:
        write_json(signals, Path(out) / SIGNAL_FILE)
    return signals


def signal_rows(per_seed: list[dict[str, dict]], seeds: list) -> list[str]:
    """The report's table: per mask set, IoU with the own repeat and with the other languages', the signal per
    seed and its mean with a 95 % interval (seeds, then languages resampled)."""
    names = list(dict.fromkeys(name for signals in per_seed for name in signals))
    lines = []
    for name in names:
        found = [(seed, s[name]) for seed, s in zip(seeds, per_seed) if name in s]
        same = " / ".join(f"{s['mean_same']:.3f}" for _, s in found)
        cross = " / ".join(f"{s['mean_cross']:.3f}" for _, s in found)
        by_seed = " / ".join(f"{s['mean_signal']:+.3f}" for _, s in found)
        mean, low, high = signal_interval([s["signal"] for _, s in found])
        interval = f"[{low:+.3f}, {high:+.3f}]" if not math.isnan(low) else "–"
        lines.append(f"| {name} | {same} | {cross} | {by_seed} | {mean:+.3f} {interval} |")
    if not lines:
        return []
    which = ", ".join(str(seed) for seed in seeds)
    return ["## Language signal: each mask search against a repeat on other batches", "",
            f"Every mask set was searched a second time with the same settings on other batches (seed + "
            f"{REPEAT_SEED_OFFSET}). Signal = IoU of a language's mask with its own repeat − mean IoU with the "
            f"other languages' repeats; 0 means the languages' masks differ by search noise only. Values per seed "
            f"({which}); the interval resamples seeds, then languages.", "",
            "| mask set | IoU with own repeat | IoU with other languages' | signal per seed | signal, mean "
            "[95 % interval] |", "|---|---|---|---|---|", *lines, ""]
