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


# What a figure makes of the languages' CERs, per seed (then averaged over seeds). macro: their mean; worst:
# the highest (ML-SUPERB 2.0's worst-language CER); spread: their standard deviation (ML-SUPERB 2.0's CER
# standard deviation across languages; the population one: the languages are all there are, not a sample).
STATISTICS = ("macro", "worst", "spread")


def reduce_languages(ratios: np.ndarray, statistic: str = "macro") -> np.ndarray:
    """``[..., seeds, languages]`` CERs -> ``[...]``: the mean over seeds of each seed's ``statistic``."""
    if statistic == "macro":
        per_seed = ratios.mean(-1)
    elif statistic == "worst":
        per_seed = ratios.max(-1)
    elif statistic == "spread":
        per_seed = ratios.std(-1)
    else:
        raise ValueError(f"unknown statistic {statistic!r}; choose one of {', '.join(STATISTICS)}")
    return per_seed.mean(-1)


def _ratios(cells) -> np.ndarray:
    """``[seeds, languages, k]`` Σ num / Σ den of every cell, unresampled."""
    return np.array([[np.atleast_2d(num).sum(-1) / den.sum() for num, den in row] for row in cells])


def _statistic(cells: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], statistic: str = "macro") -> float:
    return float(reduce_languages(_ratios(cells)[..., 0], statistic))


def bootstrap_ratios(cells: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], n_boot: int = 2000, seed: int = 0,
                     resample_languages: bool = True) -> np.ndarray:
    """Bootstrap replicates ``[boot, seed slot, language slot, k]`` of Σ num / Σ den over a seeds × languages grid.

    ``cells[s][l] = (num, den)``: per-utterance numerators (edits, paired edit differences, or ``k`` rows of
    them drawn together: ``[k, n]``) and denominators (reference characters). Each replicate draws seeds, then
    languages within every drawn seed (unless ``resample_languages`` is false: a worst-language or spread figure
    is over the languages there are), then utterances within every drawn language, all with replacement; a cell
    drawn twice gets two independent utterance draws.
    """
    n_seeds = len(cells)
    if n_seeds == 0 or n_boot < 1:
        raise ValueError("need at least one seed and one replicate")
    n_langs = len(cells[0])
    if n_langs == 0 or any(len(row) != n_langs for row in cells):
        raise ValueError("every seed needs the same, non-zero number of languages")
    k = np.atleast_2d(cells[0][0][0]).shape[0]
    rng = np.random.default_rng(seed)
    seed_draw = rng.integers(0, n_seeds, size=(n_boot, n_seeds))
    lang_draw = rng.integers(0, n_langs, size=(n_boot, n_seeds, n_langs))
    if not resample_languages:
        lang_draw = np.broadcast_to(np.arange(n_langs), lang_draw.shape)
    cell_of = seed_draw[:, :, None] * n_langs + lang_draw        # [boot, seed slot, language slot]
    flat = cell_of.reshape(-1)
    ratios = np.empty((flat.size, k), dtype=np.float64)
    for c in range(n_seeds * n_langs):
        num, den = cells[c // n_langs][c % n_langs]
        num = np.atleast_2d(num)
        where = np.flatnonzero(flat == c)
        n = len(den)
        step = max(1, _MAX_DRAW // max(n * k, 1))
        for start in range(0, len(where), step):
            part = where[start:start + step]
            idx = rng.integers(0, n, size=(len(part), n))
            ratios[part] = (num[:, idx].sum(-1) / den[idx].sum(1)).T
    return ratios.reshape(*cell_of.shape, k)


def hierarchical_bootstrap(cells: Sequence[Sequence[tuple[np.ndarray, np.ndarray]]], n_boot: int = 2000,
                           seed: int = 0) -> np.ndarray:
    """Bootstrap replicates of mean_seed mean_language (Σ num / Σ den) over a seeds × languages grid
    (:func:`bootstrap_ratios`: seeds, languages and utterances resampled)."""
    return bootstrap_ratios(cells, n_boot, seed)[..., 0].mean(axis=(1, 2))


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
    statistic: str = "macro"   # the figure compared (STATISTICS): macro, worst-language or spread of CER

    @property
    def claim(self) -> str:
        return self.label or f"{self.system} < {self.baseline}"

    def as_dict(self) -> dict:
        return asdict(self) | {"claim": self.claim}


def _paired_cell(a: LanguageScores, b: LanguageScores, where: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(edits_A, edits_B, chars) over the same utterances, aligned by id."""
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
    return a.edits, b.edits, a.chars


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
            label: str = "", statistic: str = "macro") -> Comparison:
    """Paired difference A − B of macro CER (or of the worst-language CER, or of the CER spread across languages:
    ``statistic``) over ``languages`` with a hierarchical bootstrap interval. The worst-language and spread
    figures keep the languages fixed and draw the same utterances for A and B."""
    if not languages:
        raise ValueError("compare needs at least one language")
    reduce_languages(np.zeros((1, 1)), statistic)  # an unknown statistic fails before any work
    seeds = _common_seeds(a, b, names)
    cells = []
    for s in seeds:
        row = []
        for lang in languages:
            where = f"seed {s}, language {lang} ({names[0]} vs {names[1]})"
            if lang not in a[s] or lang not in b[s]:
                raise DataError(f"{where}: no scores for {names[0] if lang not in a[s] else names[1]}")
            edits_a, edits_b, chars = _paired_cell(a[s][lang], b[s][lang], where)
            # macro CER is linear: the difference of edits is the paired cell; the others need both systems' CER
            row.append((edits_a - edits_b, chars) if statistic == "macro" else (np.stack([edits_a, edits_b]), chars))
        cells.append(row)
    if statistic == "macro":
        reps, point = hierarchical_bootstrap(cells, n_boot=n_boot, seed=seed), _statistic(cells)
    else:
        ratios = bootstrap_ratios(cells, n_boot, seed, resample_languages=False)
        reps = reduce_languages(ratios[..., 0], statistic) - reduce_languages(ratios[..., 1], statistic)
        whole = _ratios(cells)
        point = float(reduce_languages(whole[..., 0], statistic) - reduce_languages(whole[..., 1], statistic))
    tail = 100 * (1 - confidence) / 2
    low, high = (float(v) for v in np.percentile(reps, [tail, 100 - tail]))
    return Comparison(names[0], names[1], scope, list(languages), list(seeds), point, low, high, confidence,
                      verdict(low, high), int(sum(len(chars) for row in cells for _, chars in row)), label,
                      statistic)


def cer_interval(scores: SystemScores, languages: str | Sequence[str], *, n_boot: int = 2000, seed: int = 0,
                 confidence: float = 0.95, statistic: str = "macro") -> tuple[float, float, float]:
    """(mean over seeds, low, high) of one system's CER on one language, or its macro CER over several (or
    their worst-language CER or spread: ``statistic``, languages kept fixed), with the same hierarchical
    bootstrap as :func:`compare`."""
    languages = [languages] if isinstance(languages, str) else list(languages)
    cells = [[(scores[s][lang].edits, scores[s][lang].chars) for lang in languages] for s in scores]
    if statistic == "macro":
        reps = hierarchical_bootstrap(cells, n_boot=n_boot, seed=seed)
    else:
        reps = reduce_languages(bootstrap_ratios(cells, n_boot, seed, resample_languages=False)[..., 0], statistic)
    tail = 100 * (1 - confidence) / 2
    low, high = np.percentile(reps, [tail, 100 - tail])
    return _statistic(cells, statistic), float(low), float(high)


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

    Returns ``{"seeds", "macro": {"mean", "std", "per_seed"}, "worst": {...}, "worst_language": [per seed],
    "spread": {...}, "languages": {lang: {...}}, "groups": {group: {...}}}``: worst is the highest language CER,
    spread the (population) standard deviation of the languages' CERs; the standard deviation across seeds is
    the sample one (n − 1).
    """
    def entry(values: list[float]) -> dict:
        mean, std = mean_std(values)
        return {"mean": mean, "std": std, "per_seed": values}

    seeds = list(scores)
    cers = {s: np.array([scores[s][lang].cer for lang in languages]) for s in seeds}
    out = {"seeds": seeds, "macro": entry([macro_cer(scores[s], languages) for s in seeds]),
           "worst": entry([float(cers[s].max()) for s in seeds]),
           "worst_language": [languages[int(cers[s].argmax())] for s in seeds],
           "spread": entry([float(cers[s].std()) for s in seeds]),
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
