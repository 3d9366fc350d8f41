"""Clustering and the within- vs across-family permutation test."""
import json

import pytest
import torch

from lasp.analysis.clustering import cluster_languages, family_test, load_families
from lasp.analysis.overlap import compute_overlap
from lasp.errors import ConfigError

LANGS = ["es", "it", "pt", "de", "nl", "sv", "ru", "pl", "cs"]
FAMILIES = dict(zip(LANGS, ["romance"] * 3 + ["germanic"] * 3 + ["slavic"] * 3))
SHAPES = {f"encoder.layers.{i}.attention.{m}.weight": (32, 32) for i in range(2) for m in ("q_proj", "v_proj")}


def planted_masks(seed=0, core_share=0.6):
    """Each family has a random core; a language takes a share of its weights from the core, the rest at random."""
    g = torch.Generator().manual_seed(seed)
    cores = {f: {n: torch.rand(s, generator=g) < 0.5 for n, s in SHAPES.items()} for f in set(FAMILIES.values())}
    masks = {}
    for lang in LANGS:
        core = cores[FAMILIES[lang]]
        masks[lang] = {n: torch.where(torch.rand(s, generator=g) < core_share, core[n],
                                      torch.rand(s, generator=g) < 0.5) for n, s in SHAPES.items()}
    return masks


def random_masks(seed=0):
    g = torch.Generator().manual_seed(seed)
    return {lang: {n: torch.rand(s, generator=g) < 0.5 for n, s in SHAPES.items()} for lang in LANGS}


def test_families_sharing_a_core_are_significant():
    stats = compute_overlap(planted_masks())
    test = family_test(stats.iou, stats.languages, FAMILIES, n_permutations=500, seed=0)
    assert test.within_mean > test.across_mean
    assert test.p_value < 0.05
    assert (test.n_within_pairs, test.n_across_pairs) == (9, 27)
    assert set(test.per_family) == {"romance", "germanic", "slavic"}


def test_random_masks_give_a_large_p_value():
    stats = compute_overlap(random_masks(seed=1))
    test = family_test(stats.iou, stats.languages, FAMILIES, n_permutations=500, seed=0)
    assert test.p_value > 0.2
    assert abs(test.statistic) < 0.02


def test_p_value_is_never_zero_and_is_reproducible():
    stats = compute_overlap(planted_masks(core_share=0.9))
    a = family_test(stats.iou, stats.languages, FAMILIES, n_permutations=99, seed=3)
    b = family_test(stats.iou, stats.languages, FAMILIES, n_permutations=99, seed=3)
    assert a.p_value == b.p_value >= 1 / 100


def test_clustering_recovers_planted_families():
    from scipy.cluster.hierarchy import fcluster
    import numpy as np

    stats = compute_overlap(planted_masks())
    clustering = cluster_languages(stats.iou, stats.languages)
    labels = fcluster(np.asarray(clustering.linkage), t=3, criterion="maxclust")
    groups = {}
    for lang, label in zip(LANGS, labels):
        groups.setdefault(label, set()).add(FAMILIES[lang])
    assert all(len(families) == 1 for families in groups.values()) and len(groups) == 3
    assert sorted(clustering.order) == sorted(LANGS)


def test_families_file_yaml_and_json(tmp_path):
    (tmp_path / "f.yaml").write_text("es: romance\nde: germanic\n")
    (tmp_path / "f.json").write_text(json.dumps({"es": "romance", "de": "germanic"}))
    assert load_families(tmp_path / "f.yaml") == load_families(tmp_path / "f.json") == {"es": "romance",
                                                                                           "de": "germanic"}
    (tmp_path / "bad.yaml").write_text("- es\n- de\n")
    with pytest.raises(ConfigError, match="bad.yaml.*mapping"):
        load_families(tmp_path / "bad.yaml")
    with pytest.raises(ConfigError, match="missing.yaml"):
        load_families(tmp_path / "missing.yaml")


def test_family_test_errors_name_the_problem():
    stats = compute_overlap(random_masks())
    partial = {k: v for k, v in FAMILIES.items() if k != "pl"}
    with pytest.raises(ConfigError, match="pl"):
        family_test(stats.iou, stats.languages, partial)
    with pytest.raises(ConfigError, match="one family"):
        family_test(stats.iou, stats.languages, {lang: "all" for lang in LANGS})
    with pytest.raises(ConfigError, match="alone"):
        family_test(stats.iou, stats.languages, {lang: lang for lang in LANGS})
