"""Languages grouped by how much their sub-networks share.

* :func:`cluster_languages` — agglomerative clustering on the distance 1 − IoU
  (average linkage, i.e. UPGMA, the usual choice for similarity matrices).
* :func:`family_test` — do languages of one family share more than languages of
  different families? The statistic is mean within-family IoU minus mean
  across-family IoU; its p-value comes from permuting the family labels over the
  languages (family sizes kept), one-sided, with the +1 correction so that it is
  never 0 (Phipson & Smyth, 2010).
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import numpy as np
import yaml

from lasp.errors import ConfigError


@dataclass
class Clustering:
    languages: list[str]
    linkage: list[list[float]]  # scipy linkage matrix rows: [left, right, distance, size]
    order: list[str]            # leaf order of the dendrogram
    method: str

    def as_dict(self) -> dict[str, Any]:
        return {"languages": self.languages, "method": self.method, "distance": "1 - IoU",
                "linkage": self.linkage, "order": self.order}


@dataclass
class FamilyTest:
    families: dict[str, str]
    within_mean: float
    across_mean: float
    statistic: float
    p_value: float
    n_permutations: int
    n_within_pairs: int
    n_across_pairs: int
    per_family: dict[str, float]  # mean within-family IoU of each family with ≥ 2 languages

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


def cluster_languages(iou: Sequence[Sequence[float]], languages: Sequence[str], method: str = "average") -> Clustering:
    """Hierarchical clustering of ``languages`` by the distance 1 − IoU."""
    from scipy.cluster.hierarchy import leaves_list, linkage
    from scipy.spatial.distance import squareform

    languages = list(languages)
    if len(languages) < 2:
        raise ConfigError(f"clustering needs at least 2 languages, got {languages}")
    dist = 1.0 - np.asarray(iou, dtype=np.float64)
    # Undefined IoU (two empty masks) counts as maximally distant rather than poisoning the linkage.
    dist = np.where(np.isnan(dist), 1.0, dist)
    dist = (dist + dist.T) / 2.0
    np.fill_diagonal(dist, 0.0)
    z = linkage(squareform(np.clip(dist, 0.0, None), checks=False), method=method)
    order = [languages[i] for i in leaves_list(z)]
    return Clustering(languages, z.tolist(), order, method)


def load_families(path: str | os.PathLike) -> dict[str, str]:
    """A ``{language: family}`` map from a YAML or JSON file (YAML is a superset of JSON)."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            data = yaml.safe_load(handle)
    except OSError as err:
        raise ConfigError(f"{path}: cannot read the families file: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML/JSON: {err}") from None
    if not isinstance(data, dict) or not data:
        raise ConfigError(f"{path}: expected a mapping language → family, e.g. {{es: romance, de: germanic}}")
    out: dict[str, str] = {}
    for lang, family in data.items():
        if not isinstance(family, (str, int)) or isinstance(family, bool):
            raise ConfigError(f"{path}: language {lang!r} maps to {family!r}; a family must be a name")
        out[str(lang)] = str(family)
    return out


def _pair_means(iou: np.ndarray, labels: np.ndarray, iu: tuple[np.ndarray, np.ndarray]) -> tuple[float, float]:
    same = labels[iu[0]] == labels[iu[1]]
    values = iou[iu]
    return float(np.nanmean(values[same])), float(np.nanmean(values[~same]))


def family_test(
    iou: Sequence[Sequence[float]],
    languages: Sequence[str],
    families: Mapping[str, str],
    n_permutations: int = 2000,
    seed: int = 0,
) -> FamilyTest:
    """Mean IoU within vs across families and a permutation-test p-value (see module docstring)."""
    languages = list(languages)
    missing = [lang for lang in languages if lang not in families]
    if missing:
        raise ConfigError(f"families: no family given for language(s) {', '.join(missing)}")
    if n_permutations < 1:
        raise ConfigError(f"n_permutations must be ≥ 1, got {n_permutations}")
    labels = np.array([families[lang] for lang in languages])
    n = len(languages)
    iu = np.triu_indices(n, k=1)
    same = labels[iu[0]] == labels[iu[1]]
    if not same.any():
        raise ConfigError("families: every language is alone in its family; nothing to compare within families")
    if same.all():
        raise ConfigError("families: all languages belong to one family; nothing to compare across families")
    matrix = np.asarray(iou, dtype=np.float64)
    within, across = _pair_means(matrix, labels, iu)
    observed = within - across
    rng = np.random.default_rng(seed)
    hits = 0
    for _ in range(n_permutations):
        w, a = _pair_means(matrix, rng.permutation(labels), iu)
        # A tiny tolerance so that a permutation reproducing the observed grouping counts as "as extreme".
        hits += (w - a) >= observed - 1e-12
    per_family = {}
    for family in sorted(set(labels)):
        idx = np.flatnonzero(labels == family)
        if len(idx) > 1:
            sub = matrix[np.ix_(idx, idx)][np.triu_indices(len(idx), k=1)]
            per_family[str(family)] = float(np.nanmean(sub))
    return FamilyTest(
        families={lang: families[lang] for lang in languages},
        within_mean=within, across_mean=across, statistic=observed,
        p_value=(hits + 1) / (n_permutations + 1), n_permutations=n_permutations,
        n_within_pairs=int(same.sum()), n_across_pairs=int((~same).sum()), per_family=per_family,
    )

