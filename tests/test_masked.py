import pytest
import torch

from conftest import make_ctc_batch
from lasp.masked.confine import ConfinedOptimizer
from lasp.errors import MaskError
from lasp.masked.model import MaskedModel
from lasp.search.pruning import make_language_masks
from lasp.masks.targets import select_targets


def _audio(batch=3, samples=6000, seed=0):
    return torch.randn(batch, samples, generator=torch.Generator().manual_seed(seed))


def test_output_equals_merge_and_unload(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks).eval()
    x = _audio()
    outputs = {}
    with torch.no_grad():
        for lang in random_masks.languages:
            with mm.language(lang):
                outputs[lang] = mm(input_values=x).logits
            merged = mm.merge_and_unload(lang).eval()
            assert type(merged) is type(tiny_ctc) and "forward" not in vars(merged.wav2vec2.encoder.layers[0]
                                                                            .attention.q_proj)
            torch.testing.assert_close(outputs[lang], merged(input_values=x).logits, rtol=0, atol=1e-5)
    assert (outputs["es"] - outputs["de"]).abs().max() > 1e-3
    # the shared weights themselves were not changed by merging
    assert not any((p == 0).float().mean() > 0.4 for p in select_targets(tiny_ctc).values())


def test_mixed_batch_matches_per_language_runs(tiny_ctc, random_masks):
    mm = MaskedModel(tiny_ctc, random_masks).eval()
    x = _audio(4)
    langs = ["de", "es", "de", "ru"]
    with torch.no_grad():
        mm.set_language(langs)
        mixed = mm(input_values=x).logits
        for i, lang in enumerate(langs):
            mm.set_language(lang)
            torch.testing.assert_close(mixed[i], mm(input_values=x[i:i + 1]).logits[0], rtol=1e-4, atol=1e-5)
    mm.set_language(langs)
    assert mm.active_languages == ("de", "es", "ru")


def test_dense_mode_and_context_restore(tiny_ctc, random_masks):
    x = _audio(2)
    with torch.no_grad():
        dense = tiny_ctc.eval()(input_values=x).logits
        mm = MaskedModel(tiny_ctc, random_masks).eval()
        mm.set_language(None)
        torch.testing.assert_close(mm(input_values=x).logits, dense)
        mm.set_language("es")
        with mm.language("de"):
            assert mm.active_languages == ("de",)
        assert mm.active_languages == ("es",)
    with pytest.raises(MaskError, match=r"unknown language 'sw'; loaded: es, de, ru"):
        mm.set_language("sw")


def test_masks_stay_out_of_state_dict_and_roundtrip(tiny_ctc, random_masks, tmp_path):
    from lasp.models.system import System

    keys_before = set(tiny_ctc.state_dict())
    mm = MaskedModel(tiny_ctc, random_masks).eval()
    assert set(tiny_ctc.state_dict()) == keys_before
    System("lasp", tiny_ctc, mm).save_pretrained(tmp_path / "system")
    loaded = System.from_pretrained(tmp_path / "system")
    loaded.train(False)
    assert loaded.name == "lasp" and loaded.languages == mm.languages
    x = _audio(2)
    with torch.no_grad(), mm.language("ru"):
        loaded.set_language("ru")
        torch.testing.assert_close(loaded(input_values=x).logits, mm(input_values=x).logits)


def test_a_masked_model_folder_of_the_earlier_layout_still_loads(tiny_ctc, random_masks, tmp_path, caplog):
    """Folders written before the shared/ layout: the HF checkpoint at the top, masks/ and masked_model.json."""
    import json
    import logging

    from lasp.models.system import System

    mm = MaskedModel(tiny_ctc, random_masks).eval()
    tiny_ctc.save_pretrained(tmp_path)
    random_masks.save(tmp_path / "masks")
    (tmp_path / "masked_model.json").write_text(json.dumps(
        {"targets": list(mm.targets), "mode": "fused", "languages": mm.languages}))
    with caplog.at_level(logging.WARNING):
        loaded = System.from_pretrained(tmp_path)
    assert any("earlier folder layout" in r.getMessage() for r in caplog.records)
    loaded.train(False)
    x = _audio(2)
    with torch.no_grad(), mm.language("de"):
        loaded.set_language("de")
        torch.testing.assert_close(loaded(input_values=x).logits, mm(input_values=x).logits)


def test_target_pattern_must_match(tiny_ctc, random_masks):
    with pytest.raises(MaskError, match=r"target pattern 'nonexistent_proj' matches no parameter"):
        MaskedModel(tiny_ctc, random_masks, target_modules=["nonexistent_proj"])


def test_opt_in_layer_norm_targets(tiny_ctc):
    targets = ["default", "layer-norms"]
    masks = make_language_masks(tiny_ctc, {"es": None, "de": None}, scorer="random", sparsity=0.5,
                                targets=targets, progress=False)
    assert any("layer_norm" in n for n in masks.parameter_names)
    mm = MaskedModel(tiny_ctc, masks).eval()
    x = _audio(2)
    with torch.no_grad(), mm.language("de"):
        torch.testing.assert_close(mm(input_values=x).logits,
                                   mm.merge_and_unload("de").eval()(input_values=x).logits, rtol=0, atol=1e-5)


def _snapshot(model):
    return {n: p.detach().clone() for n, p in select_targets(model).items()}


@pytest.mark.parametrize("mode", ["reference"])
def test_update_confinement_with_adamw(tiny_ctc, random_masks, mode):
    mm = MaskedModel(tiny_ctc, random_masks, mode=mode).train()
    optimizer = ConfinedOptimizer(torch.optim.AdamW(tiny_ctc.parameters(), lr=1e-2, weight_decay=0.1), mm)
    steps = [["es"], ["de"], ["es", "de"], ["es"], ["de", "es", "de"]]
    for i, langs in enumerate(steps):
        batch = make_ctc_batch(12, batch_size=len(langs), seed=i)
        before = _snapshot(tiny_ctc)
        mm.set_language(langs if len(langs) > 1 else langs[0])
        optimizer.zero_grad()
        mm(**batch).loss.backward()
        optimizer.step()
        union = mm.union_mask(set(langs))
        after = _snapshot(tiny_ctc)
        changed_inside = 0
        for name in before:
            outside = ~union[name]
            assert torch.equal(after[name][outside], before[name][outside]), (i, name)
            changed_inside += int((after[name][union[name]] != before[name][union[name]]).sum())
        assert changed_inside > 0  # the step did train the sub-network
