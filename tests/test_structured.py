import json

import pytest
import torch

from conftest import make_ctc_batch
from lasp.errors import ConfigError, MaskError
from lasp.masked.model import MaskedModel
from lasp.models.load import load_model
from lasp.search.structured import (StructuredMasks, export_structured, load_structured_model, make_structured_masks,
                             save_structured_model, score_structures, structure_of)


@pytest.fixture
def model():
    torch.manual_seed(0)
    return load_model("tiny", head="ctc", vocab_size=12, mask_time_prob=0.0).eval()


@pytest.fixture
def smasks(model):
    batches = {"es": [make_ctc_batch(12, seed=1)], "de": [make_ctc_batch(12, seed=2)]}
    return make_structured_masks(model, batches, importance="taylor", head_sparsity=0.5, ffn_sparsity=0.5)


def test_masks_keep_the_requested_fraction_and_differ_by_language(smasks):
    assert smasks.languages == ["es", "de"]
    for lang in smasks.languages:
        assert smasks.heads[lang].shape == (2, 4) and smasks.heads[lang].sum(1).tolist() == [2, 2]
        assert smasks.neurons[lang].shape == (2, 384) and smasks.neurons[lang].sum(1).tolist() == [192, 192]
    # Taylor scores depend on each language's data
    assert not torch.equal(smasks.neurons["es"], smasks.neurons["de"])


def test_magnitude_scores_come_from_group_norms(model):
    scores = score_structures(model, importance="magnitude")
    assert scores["heads"].shape == (2, 4) and scores["neurons"].shape == (2, 384)
    # bigger intermediate rows → bigger group importance for that neuron
    ff = model.wav2vec2.encoder.layers[0].feed_forward
    with torch.no_grad():
        ff.intermediate_dense.weight[7] *= 50
        ff.output_dense.weight[:, 7] *= 50
    again = score_structures(model, importance="magnitude")
    assert int(again["neurons"][0].argmax()) == 7
    with pytest.raises(ConfigError, match="unknown structured importance 'l3'"):
        make_structured_masks(model, {"es": None}, importance="l3")


def test_export_is_smaller_and_equals_the_masked_model(model, smasks, tmp_path):
    x = torch.randn(2, 6000, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        dense = model(input_values=x).logits
        mm = MaskedModel(model, smasks.to_language_masks("tiny")).eval()
        mm.set_language("es")
        masked = mm(input_values=x).logits
        mm.unload()
        small = export_structured(model, smasks, "es").eval()
        exported = small(input_values=x).logits
        # the caller's model is untouched by tracing/pruning a copy
        torch.testing.assert_close(model(input_values=x).logits, dense)
    assert (masked - dense).abs().max() > 1e-3
    torch.testing.assert_close(exported, masked, rtol=1e-4, atol=1e-5)
    assert structure_of(small) == [{"heads": 2, "ffn": 192}, {"heads": 2, "ffn": 192}]
    full = sum(p.numel() for p in model.parameters())
    assert sum(p.numel() for p in small.parameters()) < 0.75 * full
    save_structured_model(small, tmp_path / "es")
    with torch.no_grad():
        reloaded = load_structured_model(tmp_path / "es").eval()(input_values=x).logits
    torch.testing.assert_close(reloaded, exported)


def test_save_load_roundtrip_and_errors(smasks, tmp_path, model):
    smasks.save(tmp_path)
    loaded = StructuredMasks.load(tmp_path)
    for lang in smasks.languages:
        assert torch.equal(loaded.heads[lang], smasks.heads[lang])
        assert torch.equal(loaded.neurons[lang], smasks.neurons[lang])
    weights = loaded.weight_masks("de")
    q = weights["encoder.layers.0.attention.q_proj.weight"]
    assert q.shape == (144, 144) and q.all(1).sum() == 72 and not q[~q.all(1)].any()
    with pytest.raises(MaskError, match="unknown language 'sw'"):
        export_structured(model, loaded, "sw")
    path = tmp_path / "structured_masks.json"
    data = json.loads(path.read_text())
    data["languages"]["es"]["heads"][1] = []
    path.write_text(json.dumps(data))
    with pytest.raises(MaskError, match="es heads: layer 1 keeps"):
        StructuredMasks.load(tmp_path)
