"""LaSS-style mask search: adapt per language, prune, restore; more language-specific than one-shot Taylor masks."""
from __future__ import annotations

import pytest
import torch

from conftest import make_ctc_batch
from lasp.analysis.overlap import compute_overlap, specificity
from lasp.errors import ConfigError
from lasp.search.lass import lass_language_masks
from lasp.search.pruning import make_language_masks

LANGS = ("es", "de", "ru")


def _batches():
    # each language its own audio and transcripts; two batches each, the same for every method
    return {lang: [make_ctc_batch(12, samples=4000, seed=10 * i + k) for k in range(2)]
            for i, lang in enumerate(LANGS)}


def test_lass_restores_the_shared_model_and_reaches_the_sparsity(tiny_ctc):
    before = {k: v.clone() for k, v in tiny_ctc.state_dict().items()}
    masks = lass_language_masks(tiny_ctc, _batches(), sparsity=0.5, steps=3, lr=1e-2, progress=False)
    for k, v in tiny_ctc.state_dict().items():
        assert torch.equal(before[k], v), k
    for lang in LANGS:
        for name, density in masks.tensor_density(lang).items():
            assert density == pytest.approx(0.5, abs=1e-3), name
    assert masks.metadata["method"] == "lass" and masks.metadata["criterion"] == "change"


def test_lass_change_masks_are_more_language_specific_than_oneshot_taylor(tiny_ctc):
    batches = _batches()
    taylor = make_language_masks(tiny_ctc, batches, scorer="taylor", sparsity=0.5, progress=False)
    change = lass_language_masks(tiny_ctc, batches, sparsity=0.5, steps=5, lr=1e-3, criterion="change",
                                 progress=False)
    magnitude = lass_language_masks(tiny_ctc, batches, sparsity=0.5, steps=5, lr=1e-3, criterion="magnitude",
                                    progress=False)
    s_taylor, s_change, s_mag = (specificity(compute_overlap(m)) for m in (taylor, change, magnitude))
    # Taylor scores on the shared model are dominated by |w|: languages share far more than chance
    assert s_taylor["iou_ratio"] > 1.2
    # the change of the weights depends on the language's data only: closer to chance, more unique weights
    assert s_change["iou_ratio"] < s_taylor["iou_ratio"] - 0.1
    assert s_change["mean_unique_share"] > s_taylor["mean_unique_share"]
    # a few adaptation steps leave |W_lang| ≈ |W_shared|: magnitude LaSS masks are nearly identical
    assert s_mag["iou_ratio"] > s_change["iou_ratio"]


def test_lass_bad_settings_are_named(tiny_ctc):
    with pytest.raises(ConfigError, match="masks.lass_criterion"):
        lass_language_masks(tiny_ctc, _batches(), sparsity=0.5, criterion="delta", progress=False)
    with pytest.raises(ConfigError, match="masks.lass_steps"):
        lass_language_masks(tiny_ctc, _batches(), sparsity=0.5, steps=0, progress=False)


def test_prune_with_lass_prints_specificity(tmp_path, capsys):
    from lasp.cli import main
    from lasp.data.synth import synthesize_corpus
    from lasp.masks.language_masks import LanguageMasks

    corpus = synthesize_corpus(["es", "de"], tmp_path / "c", utterances_per_lang=4, test_utterances=1,
                               dev_utterances=1, seed=0, workers=1)
    out = tmp_path / "lass"
    assert main(["masks", "prune", "--model", "tiny", "--data", corpus["train"], "--method", "lass", "--lass-steps", "2",
                 "--min-utterances", "2", "--lass-criterion", "magnitude", "--batches", "1", "--batch-size", "2",
                 "--sparsity", "0.4", "--out", str(out)]) == 0
    masks = LanguageMasks.load(out)
    assert masks.metadata["method"] == "lass" and masks.metadata["criterion"] == "magnitude"
    assert masks.metadata["steps"] == 2
    assert all(masks.sparsity(lang) == pytest.approx(0.4, abs=1e-4) for lang in masks.languages)
    s = specificity(compute_overlap(masks))
    printed = capsys.readouterr().out
    assert f"specificity: mean pairwise IoU {s['mean_iou']:.3f} vs {s['mean_random_iou']:.3f}" in printed
    assert f"kept weights unique to one language: {s['mean_unique_share']:.3f}" in printed
