"""Multi-seed statistics of CER: mean ± std across seeds and paired bootstrap intervals.

The quantity is lasp's **macro CER**: per language, corpus-level CER (Σ character
edits / Σ reference characters over the language's utterances, what `lasp
evaluate` reports), then the unweighted mean over languages; with several seeds,
the mean of the seeds' macro CERs. A resource group's figure is the same mean
over the group's languages only.

Scores are nested ``{seed: {language: LanguageScores}}`` per system (see
:mod:`lasp.analysis.utterances`). A comparison of systems A and B is paired: in
each (seed, language) cell both were scored on the same utterances, and the
per-utterance difference of edit counts, divided by the cell's reference
characters, is exactly A's CER minus B's. Its interval comes from a
hierarchical bootstrap: resample seeds with replacement, then within each drawn
seed its languages, then within each drawn language its utterances, and
recompute the statistic; the 2.5 and 97.5 percentiles of the replicates form
the 95 % interval. Every level is a source of variation the conclusion should
survive (another seed, another language sample, another test set). With very
few seeds (the top level has only as many distinct draws as seed multisets)
the interval is coarse; the verdict says only whether it excludes 0.
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from typing import Mapping, Sequence

import numpy as np

from lasp.analysis.utterances import LanguageScores
from lasp.errors import DataError

SystemScores = Mapping[object, Mapping[str, LanguageScores]]   # {seed: {language: scores}}
_MAX_DRAW = 1 << 22  # utterance indices drawn at once per cell: bounds memory at 32 MiB

LOWER = "lower, interval excludes 0"
HIGHER = "higher, interval excludes 0"
NO_DIFFERENCE = "no difference detected"


def verdict(low: float, high: float) -> str:
    """The plain reading of an interval of A − B: A lower, A higher, or no difference detected."""
    if high < 0:
        return LOWER
    if low > 0:
        return HIGHER
    return NO_DIFFERENCE


def _statistic(cells: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]]) -> float:
    return float(np.mean([np.mean([num.sum() / den.sum() for num, den in row]) for row in cells]))


def hierarchical_bootstrap(cells: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], n_boot: int = 2000,
                           seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of mean_seed mean_language (Σ num / Σ den) over a seeds × languages grid.

    ``cells[s][l] = (num, den)``: per-utterance numerators (edits, or paired edit differences) and
    denominators (reference characters). Each replicate draws seeds, then languages within every
    drawn seed, then utterances within every drawn language, all with replacement; a cell drawn twice
    gets two independent utterance draws.
    """
    n_seeds = len(cells)
    if n_seeds == 0 or n_boot < 1:
        raise ValueError("need at least one seed and one replicate")
    n_langs = len(cells[0])
    if n_langs == 0 or any(len(row) != n_langs for row in cells):
        raise ValueError("every seed needs the same, non-zero number of languages")
    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    lang_draw = rng.integers(0, n_langs, size=(n_boot, n_seeds, n_langs))
    cell_of = seed_draw[:, :, None] * n_langs + lang_draw        # [boot, seed slot, language slot]
    flat = cell_of.reshape(-1)
    ratios = np.empty(flat.shape, dtype=np.float64)
    for c in range(n_seeds * n_langs):
        num, den = cells[c // n_langs][c % n_langs]
        where = np.flatnonzero(flat == c)
        n = len(num)
        step = max(1, _MAX_DRAW // max(n, 1))
        for start in range(0, len(where), step):
            part = where[start:start + step]
            idx = rng.integers(0, n, size=(len(part), n))
            ratios[part] = num[idx].sum(1) / den[idx].sum(1)
    return ratios.reshape(cell_of.shape).mean(axis=(1, 2))


@dataclass
class Comparison:
    """A − B in macro CER (mean over seeds) with its bootstrap interval and verdict."""

    system: str
    baseline: str
    scope: str
    languages: list[str]
    seeds: list
    difference: float
    low: float
    high: float
    confidence: float
    verdict: str
    utterances: int
    label: str = ""   # how the claim is named in tables; default "<system> < <baseline>"

    @property
    def claim(self) -> str:
        return self.label or f"{self.system} < {self.baseline}"

    def as_dict(self) -> dict:
        return asdict(self) | {"claim": self.claim}


def _paired_cell(a: LanguageScores, b: LanguageScores, where: str) -> tuple[np.ndarray, np.ndarray]:
    """(edits_A − edits_B, chars) over the same utterances, aligned by id."""
    if a.ids != b.ids:
        pos = {u: i for i, u in enumerate(b.ids)}
        only_a = [u for u in a.ids if u not in pos]
        only_b = sorted(set(b.ids) - set(a.ids))
        if only_a or only_b:
            which = f"{only_a[0]!r} only in the first" if only_a else f"{only_b[0]!r} only in the second"
            raise DataError(f"{where}: the two systems were scored on different utterances ({which})")
        order = np.array([pos[u] for u in a.ids])
        b = LanguageScores(list(a.ids), b.edits[order], b.chars[order])
    if not np.array_equal(a.chars, b.chars):
        u = a.ids[int(np.flatnonzero(a.chars != b.chars)[0])]
        raise DataError(f"{where}: utterance {u!r} has different references in the two systems")
    return a.edits - b.edits, a.chars


def _common_seeds(a: SystemScores, b: SystemScores, names: tuple[str, str]) -> list:
    seeds = list(a)
    if set(seeds) != set(b):
        missing = sorted(map(str, set(seeds) ^ set(b)))
        raise DataError(f"systems {names[0]} and {names[1]} were evaluated on different seeds (seed {missing[0]} "
                        "is in one only)")
    if not seeds:
        raise DataError(f"no seeds to compare {names[0]} with {names[1]}")
    return seeds


def compare(a: SystemScores, b: SystemScores, languages: Sequence[str], *, names: tuple[str, str] = ("A", "B"),
            scope: str = "all", n_boot: int = 2000, seed: int = 0, confidence: float = 0.95,
            label: str = "") -> Comparison:
    """Paired difference A − B of macro CER over ``languages`` with a hierarchical bootstrap interval."""
    if not languages:
        raise ValueError("compare needs at least one language")
    seeds = _common_seeds(a, b, names)
    cells = []
    for s in seeds:
        row = []
        for lang in languages:
            where = f"seed {s}, language {lang} ({names[0]} vs {names[1]})"
            if lang not in a[s] or lang not in b[s]:
                raise DataError(f"{where}: no scores for {names[0] if lang not in a[s] else names[1]}")
            row.append(_paired_cell(a[s][lang], b[s][lang], where))
        cells.append(row)
    reps = hierarchical_bootstrap(cells, n_boot=n_boot, seed=seed)
    tail = 100 * (1 - confidence) / 2
    low, high = (float(v) for v in np.percentile(reps, [tail, 100 - tail]))
    return Comparison(names[0], names[1], scope, list(languages), list(seeds), _statistic(cells), low, high,
                      confidence, verdict(low, high), int(sum(len(num) for row in cells for num, _ in row)), label)


def cer_interval(scores: SystemScores, languages: str | Sequence[str], *, n_boot: int = 2000, seed: int = 0,
                 confidence: float = 0.95) -> tuple[float, float, float]:
    """(mean over seeds, low, high) of one system's CER on one language, or its macro CER over several,
    with the same hierarchical bootstrap as :func:`compare`."""
    languages = [languages] if isinstance(languages, str) else list(languages)
    cells = [[(scores[s][lang].edits, scores[s][lang].chars) for lang in languages] for s in scores]
    reps = hierarchical_bootstrap(cells, n_boot=n_boot, seed=seed)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return _statistic(cells), float(low), float(high)


def mean_std(values: Sequence[float]) -> tuple[float, float]:
    """Mean and sample standard deviation (n − 1 in the denominator; NaN for a single value)."""
    arr = np.asarray(values, dtype=float)
    if arr.size == 0:
        return math.nan, math.nan
    return float(arr.mean()), float(arr.std(ddof=1)) if arr.size > 1 else math.nan


def macro_cer(per_lang: Mapping[str, LanguageScores], languages: Sequence[str]) -> float:
    return float(np.mean([per_lang[lang].cer for lang in languages]))


def aggregate(scores: SystemScores, languages: Sequence[str],
              groups: Mapping[str, str] | None = None) -> dict:
    """One system across seeds: mean ± std of macro CER, of each language's CER and of each group's macro CER.

    Returns ``{"seeds", "macro": {"mean", "std", "per_seed"}, "languages": {lang: {...}},
    "groups": {group: {...}}}``; the standard deviation is the sample one (n − 1).
    """
    def entry(values: list[float]) -> dict:
        mean, std = mean_std(values)
        return {"mean": mean, "std": std, "per_seed": values}

    seeds = list(scores)
    out = {"seeds": seeds, "macro": entry([macro_cer(scores[s], languages) for s in seeds]),
           "languages": {lang: entry([scores[s][lang].cer for s in seeds]) for lang in languages}, "groups": {}}
    for group, members in group_languages(languages, groups).items():
        out["groups"][group] = entry([macro_cer(scores[s], members) for s in seeds])
    return out


def group_languages(languages: Sequence[str], groups: Mapping[str, str] | None) -> dict[str, list[str]]:
    """{group: its languages, in ``languages`` order}; empty without a grouping; every language needs a group."""
    if not groups:
        return {}
    missing = [lang for lang in languages if lang not in groups]
    if missing:
        raise DataError(f"resource groups: no group given for language {missing[0]!r}")
    out: dict[str, list[str]] = {}
    for lang in languages:
        out.setdefault(str(groups[lang]), []).append(lang)
    return out
