"""Parameter accounting against real transformers modules and peft."""
import csv
import math

import pytest
import torch
import transformers

from lasp.analysis.params import (
    bottleneck_adapter_count, format_markdown, lora_count, meta_backbone, mms_adapter_counts, parameter_table,
    write_parameter_report,
)
from lasp.cli import main
from lasp.errors import ConfigError, MaskError
from lasp.models.load import preset_config
from lasp.masks.targets import select_targets

ADAPTER = transformers.models.wav2vec2.modeling_wav2vec2.Wav2Vec2AttnAdapterLayer


def by_method(rows, method, setting=None):
    return next(r for r in rows if r["method"] == method and (setting is None or r["setting"] == setting))


@pytest.mark.parametrize("stable", [True, False])
def test_mms_count_equals_adapter_modules_of_a_real_model(stable):
    config = preset_config("tiny", vocab_size=40, do_stable_layer_norm=stable)
    counts = mms_adapter_counts(config, 16)
    # A real (allocated) model; transformers only builds adapters in stable-layer-norm layers.
    real = transformers.Wav2Vec2ForCTC(preset_config("tiny", vocab_size=40, adapter_attn_dim=16,
                                                     do_stable_layer_norm=True))
    adapters = [m for m in real.modules() if isinstance(m, ADAPTER)]
    assert len(adapters) == config.num_hidden_layers
    assert counts["adapter"] == sum(p.numel() for m in adapters for p in m.parameters())
    assert counts["head"] == sum(p.numel() for p in real.lm_head.parameters()) == 144 * 40 + 40
    assert counts["adapter"] + counts["head"] == sum(p.numel() for p in real._get_adapters().values())
    assert ("stable-layer-norm copy" in counts["source"]) is not stable


def test_xlsr53_mms_adapter_d16_per_language(capsys):
    rows = parameter_table("xlsr-53", 10, adapter_dims=(16,), lora_ranks=(8,))
    mms = by_method(rows, "MMS adapters")
    # 24 layers × (LayerNorm 2·1024 + 1024·16 + 16 + 16·1024 + 1024)
    assert mms["per_language_params"] == 24 * (2 * 1024 + 2 * 1024 * 16 + 16 + 1024) == 860_544
    assert by_method(rows, "shared model")["shared_params"] == sum(
        p.numel() for p in meta_backbone(preset_config("xlsr-53")).parameters())
    assert main(["params", "--model", "xlsr-53", "--languages", "10", "--adapter-dim", "16"]) == 0
    out = capsys.readouterr().out
    print(out)
    assert "| MMS adapters" in out and "860.54 k" in out


@pytest.mark.filterwarnings("ignore::FutureWarning")  # peft calls a transformers 5.x-deprecated method
def test_lora_counts_equal_peft_on_a_real_model():
    peft = pytest.importorskip("peft")
    torch.manual_seed(0)
    model = transformers.Wav2Vec2Model(preset_config("tiny"))
    targets = list(select_targets(model))
    for rank in (4, 8):
        expected = peft.get_peft_model(
            transformers.Wav2Vec2Model(preset_config("tiny")),
            peft.LoraConfig(r=rank, target_modules=[n.rsplit(".", 1)[0] for n in targets]),
        ).get_nb_trainable_parameters()[0]
        with_peft, source = lora_count(model, targets, rank, use_peft=True)
        by_formula, formula_source = lora_count(model, targets, rank, use_peft=False)
        assert with_peft == by_formula == expected
        assert source.startswith("peft") and formula_source.startswith("formula")
    assert not any("lora" in n for n, _ in model.named_parameters())  # the caller's model is untouched


def test_table_rows_are_consistent():
    rows = parameter_table("tiny", 5, adapter_dims=(8, 32), lora_ranks=(2,), vocab_size=30)
    backbone = by_method(rows, "shared model")["total_params"]
    for r in rows:
        assert r["total_params"] == r["shared_params"] + 5 * r["per_language_params"]
        assert r["language_specific_params"] == 5 * r["per_language_params"]
        assert r["total_bytes"] == 4 * r["shared_params"] + 5 * r["per_language_bytes"]
    assert by_method(rows, "full fine-tune")["total_params"] == 5 * backbone
    assert by_method(rows, "bottleneck adapters", "d=8")["per_language_params"] == bottleneck_adapter_count(
        preset_config("tiny"), 8) == 2 * 2 * (2 * 144 * 8 + 8 + 144)
    masks_row = by_method(rows, "lasp masks")
    targets = select_targets(meta_backbone(preset_config("tiny")))
    bits = sum(p.numel() for p in targets.values())
    assert masks_row["mask_bits_per_language"] == bits and masks_row["per_language_bytes"] == bits // 8
    assert masks_row["per_language_params"] == 0
    assert by_method(rows, "CTC head")["per_language_params"] == 144 * 30 + 30
    assert "| lasp masks" in format_markdown(rows)


def test_mask_set_supplies_targets_languages_and_sharing(tmp_path):
    from lasp.analysis.overlap import compute_overlap

    names = [n for n in select_targets(meta_backbone(preset_config("tiny"))) if ".attention." in n]
    shapes = {n: (144, 144) for n in names}
    g = torch.Generator().manual_seed(0)
    masks = {lang: {n: torch.rand(s, generator=g) < 0.3 for n, s in shapes.items()} for lang in ("a", "b", "c")}
    rows = parameter_table("tiny", masks=masks, lora_ranks=(4,), use_peft=False)
    stats = compute_overlap(masks)
    row = by_method(rows, "lasp masks")
    assert row["languages"] == 3
    assert row["mask_bits_per_language"] == len(names) * 144 * 144
    assert row["shared_by_all_weights"] == stats.sharing.shared_by_all
    assert row["unique_weights_per_language"] == round(sum(stats.unique_per_language) / 3)
    # LoRA on the same (attention-only) targets.
    assert by_method(rows, "LoRA")["per_language_params"] == len(names) * 4 * (144 + 144)
    # as lasp stores the set, read back from disk: these independent masks share too little for a core, and
    # coded at density 0.3 they take fewer bytes than the raw bits
    coded = next(r for r in rows if r["method"] == "lasp masks" and r["setting"] == "core + deltas, zstd")
    from lasp.masks.language_masks import LanguageMasks
    from lasp.masks.store import read_config

    stored = tmp_path / "set"
    LanguageMasks.from_dense(masks).save(stored)
    config = read_config(str(stored))
    assert config["storage"]["core"]["kept_by"] == "none"
    coded_bits = sum(LanguageMasks.load(stored).count(LanguageMasks.load(stored)[l]) for l in ("a",))
    assert coded_bits == sum(int(m.sum()) for m in masks["a"].values())
    assert coded["per_language_bytes"] < row["per_language_bytes"]

    masks["a"][names[0]] = torch.zeros(144, 96, dtype=torch.bool)
    with pytest.raises(MaskError, match=names[0]):
        parameter_table("tiny", masks={k: v for k, v in masks.items() if k == "a"})


def test_errors_and_report_files(tmp_path, capsys):
    with pytest.raises(ConfigError, match="neither"):
        parameter_table("no-such-model", 3)
    with pytest.raises(ConfigError, match="number of languages"):
        parameter_table("tiny")
    files = write_parameter_report(parameter_table("tiny", 3), tmp_path)
    with open(files["csv"]) as handle:
        rows = list(csv.DictReader(handle))
    assert [r["method"] for r in rows][:2] == ["shared model", "full fine-tune"]
    with open(files["plot"], "rb") as handle:
        assert handle.read(8) == b"\x89PNG\r\n\x1a\n"
    assert main(["params", "--model", "tiny", "--languages", "3", "--lora-rank", "8,0"]) == 1
    assert "--lora-rank: '0'" in capsys.readouterr().err
    assert main(["params", "--model", "tiny", "--languages", "2", "--format", "csv", "--no-peft"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].startswith("method,setting,languages") and any("formula r·(in+out) (peft not used)" in l for l in out)
    assert not math.isnan(float(out[1].split(",")[9]))


def test_params_command_with_a_mask_set(tmp_path, capsys):
    from lasp.masks.language_masks import LanguageMasks

    shapes = {n: tuple(p.shape) for n, p in select_targets(meta_backbone(preset_config("tiny"))).items()}
    g = torch.Generator().manual_seed(1)
    dense = {lang: {n: torch.rand(s, generator=g) < 0.5 for n, s in shapes.items()} for lang in ("es", "de")}
    LanguageMasks.from_dense(dense, base_model="tiny").save(tmp_path / "masks")
    assert main(["params", "--model", "tiny", "--masks", str(tmp_path / "masks"), "--out", str(tmp_path / "o"),
                 "--adapter-dim", "8,16"]) == 0
    out = capsys.readouterr().out
    assert "parameters for 2 languages" in out and "unique weights/lang" in out
    assert str(tmp_path / "o" / "params.png") in out
    assert (tmp_path / "o" / "params.md").read_text().count("| MMS adapters") == 2
    assert main(["params", "--model", "base", "--masks", str(tmp_path / "masks")]) == 1
    err = capsys.readouterr().err
    assert "masked parameter 'encoder.layers.0.attention.k_proj.weight' has shape (144, 144)" in err
    assert "(768, 768)" in err


def test_lora_falls_back_to_the_formula_without_peft(monkeypatch):
    import sys

    monkeypatch.setitem(sys.modules, "peft", None)  # makes `import peft` raise ImportError
    model = meta_backbone(preset_config("tiny"))
    count, source = lora_count(model, list(select_targets(model)), 8)
    assert source == "formula r·(in+out) (peft not installed)"
    assert count == 2 * 8 * (4 * (144 + 144) + (144 + 384) + (384 + 144))
