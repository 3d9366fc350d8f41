"""Overlap statistics: IoU, LaSS overlap, per-layer/per-kind counts, sharing partition."""
import math

import pytest
import torch

from lasp.analysis.overlap import compute_overlap, iou, lass_overlap
from lasp.errors import MaskError
from lasp.masks.language_masks import LanguageMasks
from lasp.models.load import load_model
from lasp.masks.targets import select_targets


@pytest.fixture(scope="module")
def shapes():
    torch.manual_seed(0)
    return {n: tuple(p.shape) for n, p in select_targets(load_model("tiny")).items()}


def random_masks(shapes, languages, density=0.5, seed=0):
    g = torch.Generator().manual_seed(seed)
    return {lang: {n: torch.rand(s, generator=g) < density for n, s in shapes.items()} for lang in languages}


def test_identical_masks_have_iou_one_and_disjoint_masks_zero(shapes):
    a = random_masks(shapes, ["a"], seed=1)["a"]
    assert iou(a, a) == 1.0
    assert lass_overlap(a, a) == 1.0
    complement = {n: ~m for n, m in a.items()}
    assert iou(a, complement) == 0.0
    assert lass_overlap(a, complement) == 0.0


def test_iou_is_symmetric_and_lass_overlap_is_not(shapes):
    masks = random_masks(shapes, ["x", "y"], seed=2)
    # Make y much denser than x, so |A∧B|/|A| differs by direction.
    masks["y"] = {n: m | (torch.rand(m.shape, generator=torch.Generator().manual_seed(3)) < 0.6)
                  for n, m in masks["y"].items()}
    stats = compute_overlap(masks)
    assert stats.iou[0][1] == stats.iou[1][0]
    assert stats.lass_overlap[0][1] > stats.lass_overlap[1][0]


def test_lass_overlap_matches_a_hand_computation():
    # Two tensors; A keeps 3 + 2 = 5 weights, B keeps 2 + 3 = 5, they share 1 + 1 = 2.
    a = {"encoder.layers.0.attention.q_proj.weight": torch.tensor([[1, 1, 1, 0]], dtype=torch.bool),
         "encoder.layers.1.feed_forward.output_dense.weight": torch.tensor([[1, 0], [1, 0]], dtype=torch.bool)}
    b = {"encoder.layers.0.attention.q_proj.weight": torch.tensor([[0, 0, 1, 1]], dtype=torch.bool),
         "encoder.layers.1.feed_forward.output_dense.weight": torch.tensor([[1, 1], [0, 1]], dtype=torch.bool)}
    stats = compute_overlap({"a": a, "b": b})
    assert stats.overall.inter[0][1] == 2
    assert stats.lass_overlap[0][1] == pytest.approx(2 / 5)
    assert stats.iou[0][1] == pytest.approx(2 / 8)  # |A∨B| = 5 + 5 − 2
    # Per layer: layer 0 shares 1 of A's 3; layer 1 shares 1 of A's 2.
    assert stats.per_layer[0].lass_overlap()[0][1] == pytest.approx(1 / 3)
    assert stats.per_layer[1].lass_overlap()[0][1] == pytest.approx(1 / 2)
    assert stats.per_layer[1].lass_overlap()[1][0] == pytest.approx(1 / 3)
    assert list(stats.per_kind) == ["q", "ffn-out"]


def test_per_layer_and_per_kind_counts_add_up_to_overall(shapes):
    stats = compute_overlap(random_masks(shapes, ["a", "b", "c", "d"], seed=4))
    for groups in (stats.per_layer, stats.per_kind):
        assert sum(g.numel for g in groups.values()) == stats.overall.numel
        for i in range(4):
            assert sum(g.kept[i] for g in groups.values()) == stats.overall.kept[i]
            for j in range(4):
                assert sum(g.inter[i][j] for g in groups.values()) == stats.overall.inter[i][j]
        for k in range(5):
            assert sum(g.sharing[k] for g in groups.values()) == stats.overall.sharing[k]
    assert sorted(stats.per_layer) == [0, 1]
    assert list(stats.per_kind) == ["q", "k", "v", "out", "ffn-in", "ffn-out"]


def test_shared_by_all_unique_and_rest_partition_the_union(shapes):
    masks = random_masks(shapes, ["a", "b", "c"], density=0.4, seed=5)
    stats = compute_overlap(masks)
    share = stats.sharing
    stacked = {n: torch.stack([masks[l][n] for l in masks]) for n in shapes}
    union = sum(int(s.any(0).sum()) for s in stacked.values())
    all_ = sum(int(s.all(0).sum()) for s in stacked.values())
    unique = sum(int((s.sum(0) == 1).sum()) for s in stacked.values())
    assert (share.union, share.shared_by_all, share.unique) == (union, all_, unique)
    assert share.shared_by_all + share.unique + share.rest == share.union
    assert share.rest == sum(int((s.sum(0) == 2).sum()) for s in stacked.values())
    assert sum(share.counts) == share.total == stats.overall.numel
    assert sum(stats.unique_per_language) == share.unique
    # Exact pairwise intersections.
    inter_ab = sum(int((masks["a"][n] & masks["b"][n]).sum()) for n in shapes)
    assert stats.overall.inter[0][1] == inter_ab


def test_language_masks_and_plain_dicts_give_the_same_counts(shapes):
    dense = random_masks(shapes, ["es", "de", "fr"], seed=6)
    from_dict = compute_overlap(dense)
    from_lm = compute_overlap(LanguageMasks.from_dense(dense))
    assert from_lm.languages == ["es", "de", "fr"]
    assert from_lm.overall.inter == from_dict.overall.inter
    assert from_lm.overall.sharing == from_dict.overall.sharing
    assert from_lm.unique_per_language == from_dict.unique_per_language


def test_iou_of_two_empty_masks_is_undefined():
    empty = {"encoder.layers.0.attention.k_proj.weight": torch.zeros(2, 8, dtype=torch.bool)}
    assert math.isnan(iou(empty, empty))


def test_mismatched_masks_name_the_language_and_parameter(shapes):
    masks = random_masks(shapes, ["es", "de"], seed=7)
    name = next(iter(shapes))
    masks["de"][name] = masks["de"][name][:, :8]
    with pytest.raises(MaskError, match=rf"'de'.*{name}"):
        compute_overlap(masks)
    del masks["de"][name]
    with pytest.raises(MaskError, match=rf"'de'.*{name}.*missing"):
        compute_overlap(masks)
