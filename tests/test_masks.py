import json
import os
from pathlib import Path

import pytest
import torch

from lasp.errors import MaskError
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.store import language_file, stored_bytes
from lasp.models.load import load_model


def test_save_load_bit_exact_and_size(random_masks, tmp_path):
    random_masks.save(tmp_path)
    loaded = LanguageMasks.load(tmp_path)
    assert loaded.languages == random_masks.languages
    assert loaded.parameter_names == random_masks.parameter_names
    for lang in random_masks.languages:
        for name, mask in random_masks[lang].items():
            assert torch.equal(loaded[lang][name], mask)
    # at most about one bit per weight per file: the core (kept by all) and each language's delta
    sizes = stored_bytes(tmp_path)
    for size in [sizes["core"], *sizes["languages"].values()]:
        assert size <= 1.05 * random_masks.numel() / 8 + 4096
    config = json.loads((tmp_path / "mask_config.json").read_text())
    assert config["format_version"] == 2 and config["packing"]["bits_per_weight"] == 1
    assert config["storage"]["layout"] == "core+delta" and config["storage"]["codec"] == "zstd"
    assert set(config["sparsity"]) == {"es", "de", "ru"}


def test_load_reads_only_requested_languages(random_masks, tmp_path):
    random_masks.save(tmp_path)
    os.remove(language_file(tmp_path, "ru"))  # would fail if it were read
    masks = LanguageMasks.load(tmp_path, languages=["de"])
    assert masks.languages == ["de"]
    assert masks.metadata["available_languages"] == ["es", "de", "ru"]


def test_unknown_language_names_it_and_lists_known(random_masks, tmp_path):
    with pytest.raises(MaskError, match=r"unknown language 'sw'.*es, de, ru"):
        random_masks["sw"]
    random_masks.save(tmp_path)
    with pytest.raises(MaskError, match=r"'sw'.*es, de, ru"):
        LanguageMasks.load(tmp_path, languages=["sw"])


def test_truncated_or_corrupt_file(random_masks, tmp_path):
    random_masks.save(tmp_path)
    path = Path(language_file(tmp_path, "de"))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(MaskError, match=r"masks\.de\.\w+\.safetensors: corrupt"):
        LanguageMasks.load(tmp_path, languages=["de"])
    config = json.loads((tmp_path / "mask_config.json").read_text())
    del config["checksums"]  # past the checksum: the file itself is unreadable
    (tmp_path / "mask_config.json").write_text(json.dumps(config))
    path.write_bytes(b"not a safetensors file at all")
    with pytest.raises(MaskError, match=r"masks\.de\.\w+\.safetensors: corrupt or truncated"):
        LanguageMasks.load(tmp_path, languages=["de"])
    (tmp_path / "mask_config.json").write_text("{broken")
    with pytest.raises(MaskError, match=r"mask_config.json: not a readable lasp mask config \(not valid JSON: "):
        LanguageMasks.load(tmp_path)


def test_validate_names_missing_and_misshaped_parameter(random_masks):
    other = load_model("tiny", head="ctc", vocab_size=12, num_hidden_layers=1)
    with pytest.raises(MaskError, match=r"encoder\.layers\.1\.attention\.\w+\.weight does not exist"):
        random_masks.validate(other)
    wider = load_model("tiny", head="ctc", vocab_size=12, intermediate_size=200)
    with pytest.raises(MaskError, match=r"feed_forward\.intermediate_dense\.weight has shape \[384, 144\]"):
        random_masks.validate(wider)


def test_masks_apply_across_heads(random_masks, tiny_pretraining):
    # canonical names: masks made on a CTC model fit the pre-training model of the same shapes
    random_masks.validate(tiny_pretraining)


def test_set_algebra_and_density(random_masks):
    es, de = random_masks["es"], random_masks["de"]
    union = random_masks.union(["es", "de"])
    inter = random_masks.intersection(["es", "de"])
    for name in es:
        assert torch.equal(union[name], es[name] | de[name])
        assert torch.equal(inter[name], es[name] & de[name])
    shared = random_masks.shared_by_all()
    assert all(torch.equal(shared[n], es[n] & de[n] & random_masks["ru"][n]) for n in es)
    total = sum(m.numel() for m in es.values())
    assert random_masks.density("es") == pytest.approx(sum(int(m.sum()) for m in es.values()) / total)
    assert random_masks.density("es") == pytest.approx(0.5, abs=1e-6)
    assert 0.2 < random_masks.iou("es", "de") < 0.5  # independent 50% masks: IoU ≈ 1/3
    assert random_masks.iou("es", "es") == 1.0


def test_from_dense_rejects_inconsistent_languages():
    a = {"w": torch.ones(2, 8, dtype=torch.bool)}
    with pytest.raises(MaskError, match="language 'de' covers different parameters"):
        LanguageMasks.from_dense({"es": a, "de": {"v": torch.ones(2, 8, dtype=torch.bool)}})
    with pytest.raises(MaskError, match="cannot name a mask file"):
        LanguageMasks.from_dense({"../x": a})
