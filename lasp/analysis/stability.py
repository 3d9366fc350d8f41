"""Is a mask set's language specificity signal or search noise? Two searches of the same languages compared.

A mask search scores a few batches per language, so two searches of one language on different batches do not
give the same mask. :func:`search_stability` takes two mask sets over the same parameters (e.g. the same search
with another ``--seed``, which draws other batches) and compares, over all targeted weights:

* ``same[lang]``: IoU of the language's mask in set A with its mask in set B (how repeatable the search is);
* ``cross[lang]``: mean IoU of the language's mask in A with every *other* language's mask in B;
* ``signal[lang]`` = same − cross, and their means.

A language-specific mask is closer to its own repeat than to other languages' masks: ``signal`` > 0. When
``signal`` ≈ 0, a language's mask is as close to another language's as to itself, so the differences between
the languages' masks (what :func:`lasp.analysis.overlap.specificity` measures) are search noise, not language.
"""
from __future__ import annotations

import math
from typing import Any, Mapping, Sequence

import numpy as np

from lasp.analysis.stats import hierarchical_bootstrap
from lasp.errors import MaskError
from lasp.masks.bits import iou_packed


def search_stability(a: Any, b: Any) -> dict[str, Any]:
    """Same-language vs other-language IoU between two :class:`lasp.masks.language_masks.LanguageMasks` (module docstring)."""
    if a.shapes != b.shapes:
        names = sorted(set(a.shapes) ^ set(b.shapes))
        differ = names[0] if names else next(n for n in a.shapes if a.shapes[n] != b.shapes[n])
        raise MaskError(f"the two mask sets cover different parameters (first difference: {differ}); compare "
                        "searches of the same model")
    languages = [lang for lang in a.languages if lang in b.languages]
    if len(languages) < 2:
        raise MaskError(f"the two mask sets share {len(languages)} language(s) ({', '.join(languages) or 'none'}); "
                        "stability needs at least two")
    names = list(a.shapes)
    pa = {lang: [a.packed(lang)[n] for n in names] for lang in languages}
    pb = {lang: [b.packed(lang)[n] for n in names] for lang in languages}
    same, cross = {}, {}
    for x in languages:
        same[x] = iou_packed(pa[x], pb[x])
        others = [iou_packed(pa[x], pb[y]) for y in languages if y != x]
        cross[x] = sum(others) / len(others)
    signal = {lang: same[lang] - cross[lang] for lang in languages}

    def mean(values: dict[str, float]) -> float:
        finite = [v for v in values.values() if not math.isnan(v)]
        return sum(finite) / len(finite) if finite else math.nan

    return {"languages": languages, "same": same, "cross": cross, "signal": signal,
            "mean_same": mean(same), "mean_cross": mean(cross), "mean_signal": mean(signal)}


def format_stability(s: dict[str, Any]) -> str:
    """Two lines for the terminal and reports."""
    low = min(s["signal"], key=s["signal"].get)
    return (f"search stability: a language's mask vs its repeat IoU {s['mean_same']:.3f}, vs other languages' "
            f"{s['mean_cross']:.3f}\nlanguage signal (same − other) {s['mean_signal']:+.3f} on average "
            f"(lowest {low} {s['signal'][low]:+.3f}); ≈ 0 means the masks' differences are search noise")


def signal_interval(per_seed: Sequence[Mapping[str, float]], n_boot: int = 2000, seed: int = 0,
                    confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high) of the mean language signal over several seeds' ``signal`` dicts (the same languages):
    the hierarchical bootstrap of :mod:`lasp.analysis.stats`, seeds then languages resampled."""
    if not per_seed:
        return math.nan, math.nan, math.nan
    languages = list(per_seed[0])
    one = np.ones(1)
    cells = [[(np.array([float(signals[lang])]), one) for lang in languages] for signals in per_seed]
    mean = float(np.mean([[num[0] for num, _ in row] for row in cells]))
    reps = hierarchical_bootstrap(cells, n_boot=n_boot, seed=seed)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return mean, float(low), float(high)
