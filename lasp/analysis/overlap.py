"""How much language sub-networks share: pairwise IoU, LaSS overlap, sharing counts.

Pure computations over a mask set, given either as :class:`lasp.masks.language_masks.LanguageMasks`
(anything with ``.languages`` and ``[lang]``; ``.packed(lang)`` is used when
present so that only one tensor is ever unpacked at a time) or as a plain
``{lang: {param_name: bool tensor}}`` dict.

Every statistic is built from two kinds of integer counts, accumulated tensor by
tensor into the groups ``overall``, ``layer <i>`` and ``kind <q|k|v|out|ffn-in|ffn-out>``:

* ``kept[a]``       = |A|        (weights language ``a`` keeps)
* ``inter[a][b]``   = |A ∧ B|    (diagonal: |A|)
* ``sharing[k]``    = number of weights kept by exactly ``k`` languages (k = 0..N)
* ``max_inter[a][b]`` = Σ_t min(|A_t|, |B_t|): the largest |A ∧ B| masks with these per-tensor
  densities can have
* ``random_inter[a][b]`` = Σ_t n_t d_a,t d_b,t: the expected |A ∧ B| of independent random masks with
  the same per-tensor densities d (a float)

IoU |A∧B| / |A∨B| (symmetric) and the LaSS overlap |A∧B| / |A| (row language
``a``, column ``b``; Lin et al., ACL 2021) follow from them, and so does the
specificity of a mask set (:func:`specificity`): the observed IoU against the
IoU random masks of the same density would give (E|A∪B| = |A| + |B| − E|A∧B|).
Counts are exact integers: intersections are computed with float64 matrix
products over chunks, which are exact far beyond the chunk size.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Mapping

import torch
from tqdm.auto import tqdm

from lasp.errors import MaskError
from lasp.masks.bits import unpack_bits
from lasp.masks.targets import layer_index, module_kind

KINDS = ("q", "k", "v", "out", "ffn-in", "ffn-out", "other")
_CHUNK = 1 << 20  # weights per matmul chunk: bounds memory at N × 8 MiB


@dataclass
class GroupCounts:
    """Integer counts for one group of weights (all targets, one layer, or one module kind)."""

    numel: int
    kept: list[int]
    inter: list[list[int]]
    sharing: list[int]
    max_inter: list[list[int]]
    random_inter: list[list[float]]

    @classmethod
    def empty(cls, n: int) -> "GroupCounts":
        return cls(0, [0] * n, [[0] * n for _ in range(n)], [0] * (n + 1), [[0] * n for _ in range(n)],
                   [[0.0] * n for _ in range(n)])

    def add(self, numel: int, inter: torch.Tensor, sharing: torch.Tensor) -> None:
        """Add one tensor's counts; its kept counts (the diagonal) give the density-only references."""
        n = len(self.kept)
        self.numel += numel
        kept = [int(inter[a, a]) for a in range(n)]
        for a in range(n):
            self.kept[a] += kept[a]
            for b in range(n):
                self.inter[a][b] += int(inter[a, b])
                self.max_inter[a][b] += min(kept[a], kept[b])
                # diagonal: a language against itself is its own reference, not an independent draw
                self.random_inter[a][b] += kept[a] if a == b else kept[a] * kept[b] / numel
        for k in range(n + 1):
            self.sharing[k] += int(sharing[k])

    def union(self, a: int, b: int) -> int:
        return self.kept[a] + self.kept[b] - self.inter[a][b]

    def iou(self) -> list[list[float]]:
        """|A∧B| / |A∨B|; NaN where both masks are empty (the ratio is undefined)."""
        n = len(self.kept)
        return [[_ratio(self.inter[a][b], self.union(a, b)) for b in range(n)] for a in range(n)]

    def lass_overlap(self) -> list[list[float]]:
        """|A∧B| / |A| with A the row language; NaN where A is empty."""
        n = len(self.kept)
        return [[_ratio(self.inter[a][b], self.kept[a]) for b in range(n)] for a in range(n)]

    def random_iou(self) -> list[list[float]]:
        """E|A∧B| / E|A∨B| of independent random masks with these per-tensor densities."""
        n = len(self.kept)
        return [[_ratio(self.random_inter[a][b], self.kept[a] + self.kept[b] - self.random_inter[a][b])
                 for b in range(n)] for a in range(n)]

    def max_iou(self) -> list[list[float]]:
        """The largest IoU masks with these per-tensor densities can reach (nested masks in every tensor)."""
        n = len(self.kept)
        return [[_ratio(self.max_inter[a][b], self.kept[a] + self.kept[b] - self.max_inter[a][b])
                 for b in range(n)] for a in range(n)]

    def density(self) -> list[float]:
        return [_ratio(k, self.numel) for k in self.kept]

    def as_dict(self) -> dict[str, Any]:
        return {
            "numel": self.numel, "kept": list(self.kept), "density": self.density(),
            "intersection": [list(r) for r in self.inter], "iou": self.iou(),
            "lass_overlap": self.lass_overlap(), "sharing_counts": list(self.sharing),
            "random_iou": self.random_iou(), "max_iou": self.max_iou(),
        }


@dataclass
class SharingSummary:
    """How many languages keep each weight: the union splits into shared-by-all, unique and the rest."""

    counts: list[int]  # counts[k] = weights kept by exactly k languages
    total: int

    @property
    def n_languages(self) -> int:
        return len(self.counts) - 1

    @property
    def union(self) -> int:
        return self.total - self.counts[0]

    @property
    def shared_by_all(self) -> int:
        return self.counts[-1]

    @property
    def unique(self) -> int:
        # With one language every kept weight is both "shared by all" and "unique"; report it as shared.
        return self.counts[1] if self.n_languages > 1 else 0

    @property
    def rest(self) -> int:
        return self.union - self.shared_by_all - self.unique

    def as_dict(self) -> dict[str, Any]:
        return {
            "total": self.total, "union": self.union, "counts": list(self.counts),
            "shared_by_all": self.shared_by_all, "unique": self.unique, "rest": self.rest,
            "fraction_of_targets": [_ratio(c, self.total) for c in self.counts],
            "fraction_of_union": [_ratio(c, self.union) for c in self.counts],
            "shared_by_all_fraction_of_union": _ratio(self.shared_by_all, self.union),
            "unique_fraction_of_union": _ratio(self.unique, self.union),
            "rest_fraction_of_union": _ratio(self.rest, self.union),
        }


@dataclass
class OverlapStats:
    """Counts for ``overall``, per layer and per module kind, plus per-language unique counts."""

    languages: list[str]
    overall: GroupCounts
    per_layer: dict[int, GroupCounts] = field(default_factory=dict)
    per_kind: dict[str, GroupCounts] = field(default_factory=dict)
    other: GroupCounts | None = None  # targets outside the encoder layers (no layer index)
    unique_per_language: list[int] = field(default_factory=list)
    # expected weights unique to each language if every mask were random with its per-tensor densities
    random_unique_per_language: list[float] = field(default_factory=list)

    @property
    def iou(self) -> list[list[float]]:
        return self.overall.iou()

    @property
    def lass_overlap(self) -> list[list[float]]:
        return self.overall.lass_overlap()

    @property
    def sharing(self) -> SharingSummary:
        return SharingSummary(list(self.overall.sharing), self.overall.numel)


def _ratio(num: int, den: int) -> float:
    return num / den if den else math.nan


def _as_dense_getter(masks: Any):
    """(languages, names, shapes, get(lang, name) → bool tensor) for either mask representation."""
    if isinstance(masks, Mapping):
        languages = [str(lang) for lang in masks]
        if not languages:
            raise MaskError("the mask set holds no language")
        first = masks[languages[0]]
        names = list(first)
        shapes = {name: tuple(first[name].shape) for name in names}
        for lang in languages:
            got = masks[lang]
            missing = [n for n in names if n not in got]
            extra = [n for n in got if n not in shapes]
            if missing or extra:
                bad = (missing or extra)[0]
                raise MaskError(
                    f"language {lang!r}: parameter {bad!r} is "
                    f"{'missing' if missing else 'not in the mask of ' + repr(languages[0])}; "
                    "all languages must mask the same parameters"
                )
            for name in names:
                tensor = got[name]
                if tuple(tensor.shape) != shapes[name]:
                    raise MaskError(
                        f"language {lang!r}: mask of {name!r} has shape {tuple(tensor.shape)}, "
                        f"expected {shapes[name]} (as for {languages[0]!r})"
                    )
                if tensor.dtype != torch.bool:
                    raise MaskError(f"language {lang!r}: mask of {name!r} is {tensor.dtype}, expected torch.bool")
        return languages, names, shapes, lambda lang, name: masks[lang][name]

    if not hasattr(masks, "languages"):
        raise MaskError(f"cannot read masks from a {type(masks).__name__}; give a LanguageMasks or {{lang: {{name: bool tensor}}}}")
    languages = list(masks.languages)
    if not languages:
        raise MaskError("the mask set holds no language")
    if hasattr(masks, "packed") and hasattr(masks, "shapes"):
        shapes = {name: tuple(shape) for name, shape in masks.shapes.items()}
        names = list(getattr(masks, "parameter_names", shapes))
        packed = {lang: masks.packed(lang) for lang in languages}
        return languages, names, shapes, lambda lang, name: unpack_bits(packed[lang][name], shapes[name])
    dense = {lang: masks[lang] for lang in languages}
    return _as_dense_getter(dense)


def _tensor_counts(stack: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """For ``stack`` [N, numel] bool: the N×N intersection counts and the sharing histogram (N+1)."""
    n, numel = stack.shape
    inter = torch.zeros(n, n, dtype=torch.int64)
    sharing = torch.zeros(n + 1, dtype=torch.int64)
    for start in range(0, numel, _CHUNK):
        chunk = stack[:, start:start + _CHUNK].to(torch.float64)
        inter += (chunk @ chunk.T).round().to(torch.int64)
        sharing += torch.bincount(chunk.sum(0).to(torch.int64), minlength=n + 1)
    return inter, sharing


def compute_overlap(masks: Any, progress: bool = False) -> OverlapStats:
    """All overlap counts of a mask set (see the module docstring); ``progress`` shows a bar over tensors."""
    languages, names, shapes, get = _as_dense_getter(masks)
    n = len(languages)
    stats = OverlapStats(languages, GroupCounts.empty(n), unique_per_language=[0] * n,
                         random_unique_per_language=[0.0] * n)
    for name in tqdm(names, desc="overlap", unit="tensor", disable=not progress):
        stack = torch.stack([get(lang, name).reshape(-1) for lang in languages])
        inter, sharing = _tensor_counts(stack)
        numel = stack.shape[1]
        stats.overall.add(numel, inter, sharing)
        layer = layer_index(name)
        if layer is None:
            stats.other = stats.other or GroupCounts.empty(n)
            stats.other.add(numel, inter, sharing)
        else:
            stats.per_layer.setdefault(layer, GroupCounts.empty(n)).add(numel, inter, sharing)
        stats.per_kind.setdefault(module_kind(name), GroupCounts.empty(n)).add(numel, inter, sharing)
        if n > 1:
            only_one = stack.sum(0) == 1
            for a in range(n):
                stats.unique_per_language[a] += int((stack[a] & only_one).sum())
            density = inter.diagonal().to(torch.float64) / numel
            for a in range(n):
                others = torch.cat([density[:a], density[a + 1:]])
                stats.random_unique_per_language[a] += float(numel * density[a] * torch.prod(1 - others))
    stats.per_layer = dict(sorted(stats.per_layer.items()))
    stats.per_kind = {k: stats.per_kind[k] for k in KINDS if k in stats.per_kind}
    return stats


def iou(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """IoU of two single-language masks ({name: bool tensor}) over all their parameters."""
    return compute_overlap({"a": dict(a), "b": dict(b)}).iou[0][1]


def lass_overlap(a: Mapping[str, torch.Tensor], b: Mapping[str, torch.Tensor]) -> float:
    """LaSS overlap Σ|A∧B| / Σ|A| of mask ``a`` with mask ``b``."""
    return compute_overlap({"a": dict(a), "b": dict(b)}).lass_overlap[0][1]


def _mean_pairs(matrix: list[list[float]]) -> float:
    """Mean over the pairs a < b, ignoring undefined (NaN) entries; NaN with fewer than two languages."""
    n = len(matrix)
    values = [matrix[a][b] for a in range(n) for b in range(a + 1, n) if not math.isnan(matrix[a][b])]
    return sum(values) / len(values) if values else math.nan


def specificity(stats: OverlapStats) -> dict[str, Any]:
    """How language-specific a mask set is, against random masks of the same per-tensor densities.

    ``iou_ratio`` = mean pairwise IoU / mean pairwise IoU of random masks: ≈ 1 for random masks, above 1
    when languages share more than chance, up to ``max_iou_ratio`` (every tensor's masks nested, e.g.
    identical masks); below 1 when they avoid each other. ``iou_excess`` is the same as a difference.
    ``unique_share``: per language, the fraction of its kept weights no other language keeps, next to
    what random masks would give (``random_unique_share``).
    """
    overall = stats.overall
    mean_iou = _mean_pairs(overall.iou())
    mean_random = _mean_pairs(overall.random_iou())
    mean_max = _mean_pairs(overall.max_iou())
    unique = [_ratio(u, k) for u, k in zip(stats.unique_per_language, overall.kept)]
    random_unique = [u / k if k else math.nan for u, k in zip(stats.random_unique_per_language, overall.kept)]
    multi = len(stats.languages) > 1

    def mean(values: list[float]) -> float:
        values = [v for v in values if not math.isnan(v)]
        return sum(values) / len(values) if values and multi else math.nan

    return {
        "mean_iou": mean_iou, "mean_random_iou": mean_random, "mean_max_iou": mean_max,
        "iou_ratio": mean_iou / mean_random if mean_random else math.nan,
        "max_iou_ratio": mean_max / mean_random if mean_random else math.nan,
        "iou_excess": mean_iou - mean_random,
        "unique_share": unique if multi else [math.nan] * len(unique),
        "random_unique_share": random_unique if multi else [math.nan] * len(unique),
        "mean_unique_share": mean(unique), "mean_random_unique_share": mean(random_unique),
    }
