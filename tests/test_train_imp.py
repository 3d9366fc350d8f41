"""Iterative magnitude pruning with rewinding: reaches the sparsity, rewinds the model, depends on the data."""
from __future__ import annotations

import pytest
import torch

from conftest import make_ctc_batch
from lasp.search.imp import imp_language_masks, round_sparsity


def test_round_sparsity_is_geometric():
    assert round_sparsity(0.75, 1, 2) == pytest.approx(0.5)
    assert round_sparsity(0.75, 2, 2) == pytest.approx(0.75)


def test_imp_masks_sparsity_rewind_and_language_dependence(tiny_ctc):
    before = {k: v.clone() for k, v in tiny_ctc.state_dict().items()}
    batches = {"es": [make_ctc_batch(12, samples=4000, seed=1)], "de": [make_ctc_batch(12, samples=4000, seed=2)]}
    masks = imp_language_masks(tiny_ctc, batches, sparsity=0.5, rounds=2, steps=3, lr=1e-2, progress=False)
    after = tiny_ctc.state_dict()
    for k in before:  # rewound: the shared model is unchanged
        assert torch.equal(before[k], after[k]), k
    for lang in ("es", "de"):
        for name, density in masks.tensor_density(lang).items():
            assert density == pytest.approx(0.5, abs=1e-3), name
    # different data → different sub-networks, but more alike than chance (same starting magnitudes)
    iou = masks.iou("es", "de")
    assert 1 / 3 < iou < 1.0
    assert masks.metadata["method"] == "imp"
