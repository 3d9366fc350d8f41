"""What a mask set costs on disk, per codec: each language coded alone vs a shared core plus per-language deltas
(the core lasp stores, the weights a majority of the languages keep, and for comparison the weights every
language keeps), and how long loading one language takes (`lasp masks size`).

Bytes are the coded bits of every tensor (:func:`lasp.masks.store.coded_sizes`), without the files' small
headers; ``raw`` is the packed bits, one bit per weight per language. Loading times come from sets written to a
temporary folder in each codec and read back one language at a time (the core and that language's file),
the fastest of a few reads.
"""
from __future__ import annotations

import math
import tempfile
import time
from typing import Sequence

from lasp.masks.bits import packed_shape
from lasp.masks.codecs import CODECS, DEFAULT_CODEC
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.store import coded_sizes

LOAD_REPEATS = 3


def storage_table(masks: LanguageMasks, codecs: Sequence[str] = CODECS, load_times: bool = True) -> dict:
    """``{"languages", "weights", "raw_per_language", "codecs": {codec: {...}}}`` for ``masks``."""
    packed = {lang: masks.packed(lang) for lang in masks.languages}
    n = len(packed)
    raw = sum(math.prod(packed_shape(s)) for s in masks.shapes.values())
    out = {"languages": masks.languages, "weights": masks.numel(), "raw_per_language": raw, "codecs": {}}
    layouts = [(codec, "majority") for codec in codecs]
    if DEFAULT_CODEC in codecs:
        layouts.append((DEFAULT_CODEC, "intersection"))  # the core lasp does not use, for comparison
    for codec, core in layouts:
        sizes = coded_sizes(packed, codec, core)
        total = sizes["core"] + sum(sizes["deltas"].values())
        entry = {"codec": codec, "core_kept_by": core, "core": sizes["core"], "deltas": sizes["deltas"],
                 "alone": sizes["alone"], "total": total, "per_language": total / n,
                 "alone_per_language": sum(sizes["alone"].values()) / n,
                 "bits_per_weight": 8 * total / n / masks.numel()}
        if load_times and core == "majority":  # what a save writes
            entry["load_seconds"] = _load_times(masks, codec)
        out["codecs"][codec if core == "majority" else f"{codec}, intersection core"] = entry
    return out


def _load_times(masks: LanguageMasks, codec: str) -> dict[str, float]:
    with tempfile.TemporaryDirectory(prefix="lasp-mask-size-") as tmp:
        masks.save(tmp, mode="new", codec=codec)
        times = {}
        for lang in masks.languages:
            best = math.inf
            for _ in range(LOAD_REPEATS):
                start = time.perf_counter()
                LanguageMasks.load(tmp, [lang])
                best = min(best, time.perf_counter() - start)
            times[lang] = best
    return times


def _mib(n: float) -> str:
    return f"{n / 2**20:.3f} MiB" if n >= 2**20 else f"{n / 1024:.1f} KiB"


def format_storage(table: dict) -> str:
    """The markdown table `lasp masks size` prints."""
    n, raw = len(table["languages"]), table["raw_per_language"]
    lines = [f"{n} languages × {table['weights']:,} masked weights; raw (packed bits, 1 bit per weight): "
             f"{_mib(raw)} per language, {_mib(n * raw)} in all", "",
             "| codec | core: weights kept by | each language alone | core | delta per language (mean) | "
             "core + deltas | per language (core shared) | bits per weight per language | load one language "
             "(core + its file) |", "|---|---|---|---|---|---|---|---|---|"]
    for e in table["codecs"].values():
        load = e.get("load_seconds")
        shown = f"{1000 * sum(load.values()) / len(load):.1f} ms (mean)" if load else "–"
        core = "a majority" if e["core_kept_by"] == "majority" else "every language"
        lines.append(f"| {e['codec']} | {core} | {_mib(e['alone_per_language'])} | {_mib(e['core'])} | "
                     f"{_mib(sum(e['deltas'].values()) / n)} | {_mib(e['total'])} | {_mib(e['per_language'])} | "
                     f"{e['bits_per_weight']:.3f} | {shown} |")
    return "\n".join(lines)
