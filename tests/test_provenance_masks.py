"""Mask sets are never mixed up or silently overwritten: per-run masks, provenance checks, checksums, safe prune."""
from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import save_file

from lasp.cli import main
from lasp.config.recipe import load_recipe
from lasp.errors import DataError, MaskError
from lasp.masks.language_masks import LanguageMasks
from lasp.masks.store import language_file, mask_file_name
from test_train_support import FAST_MODEL, make_corpus

ROOT = Path(__file__).resolve().parent.parent


def tree_hashes(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root`` (lock files excluded: they come and go with writers)."""
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(Path(root).rglob("*")) if p.is_file() and p.name != ".lasp.lock"}


def tiny_recipe(corpus: dict, out: Path, *extra: str):
    """recipes/pretrain_tiny.yaml as shipped (no masks.dir), made fast."""
    return load_recipe(ROOT / "recipes" / "pretrain_tiny.yaml", [
        *FAST_MODEL, "device=cpu", f"output_dir={out}", f"data.train={corpus['train']}", "data.batch_size=2",
        "pretrain.max_steps=1", "pretrain.max_minutes=null", "pretrain.num_negatives=5",
        "pretrain.mask_time_length=2", "pretrain.mask_time_prob=0.5", "masks.max_batches=1",
        "masks.min_utterances=2", *extra,
    ])


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"))


def test_second_experiment_gets_its_own_masks(tmp_path, corpus):
    from lasp.train.pretrain import pretrain

    pretrain(tiny_recipe(corpus, tmp_path / "a"), progress=False)
    a_masks = tmp_path / "a" / "pretrain-lasp" / "masks-lasp"
    before = tree_hashes(a_masks)
    pretrain(tiny_recipe(corpus, tmp_path / "b", "masks.sparsity=0.8", "masks.scorer=magnitude"), progress=False)
    b = LanguageMasks.load(tmp_path / "b" / "pretrain-lasp" / "masks-lasp")
    assert all(b.sparsity(l) == pytest.approx(0.8, abs=0.01) for l in b.languages)
    assert {r["scorer"] for r in b.records().values()} == {"magnitude"}
    assert tree_hashes(a_masks) == before
    a = LanguageMasks.load(a_masks)
    assert all(a.sparsity(l) == pytest.approx(0.5, abs=0.01) for l in a.languages)


def test_shared_mask_set_made_differently_is_refused_unless_reuse(tmp_path, corpus):
    from lasp.train.pretrain import pretrain

    shared = tmp_path / "shared-masks"
    pretrain(tiny_recipe(corpus, tmp_path / "a", f"masks.dir={shared}"), progress=False)
    before = tree_hashes(shared)
    cfg = tiny_recipe(corpus, tmp_path / "b", f"masks.dir={shared}", "masks.sparsity=0.8", "masks.scorer=magnitude")
    with pytest.raises(MaskError) as err:
        pretrain(cfg, progress=False)
    msg = str(err.value)
    assert "scorer=taylor" in msg and "sparsity=0.5" in msg  # what the set has
    assert "scorer=magnitude" in msg and "sparsity=0.8" in msg and "masks.reuse=true" in msg  # what was asked
    assert "\n" not in msg
    assert tree_hashes(shared) == before
    pretrain(tiny_recipe(corpus, tmp_path / "c", f"masks.dir={shared}", "masks.sparsity=0.8",
                         "masks.scorer=magnitude", "masks.reuse=true"), progress=False)
    assert tree_hashes(shared) == before


def test_masks_searched_on_other_base_weights_are_refused(tmp_path, corpus):
    from lasp.train.pretrain import pretrain

    shared = tmp_path / "shared-masks"
    pretrain(tiny_recipe(corpus, tmp_path / "a", f"masks.dir={shared}"), progress=False)
    rec = LanguageMasks.load(shared).records()["es"]
    assert rec["base_model"] == "tiny" and len(rec["base_model_targets_sha256"]) == 64
    # the same preset name built from another seed: other weights, so other masks would have been found
    with pytest.raises(MaskError, match=r"the set has base_model=tiny \(weights sha256 \w{12}\); the recipe asks "
                                        r"base_model=tiny \(weights sha256 \w{12}\)"):
        pretrain(tiny_recipe(corpus, tmp_path / "b", f"masks.dir={shared}", "seed=1"), progress=False)


def test_masks_pruned_on_one_folder_are_refused_on_another_with_other_weights(tmp_path, corpus, capsys):
    from lasp.cli import main
    from lasp.models.load import load_model
    from lasp.train.pretrain import pretrain

    def folder(name, seed):
        torch.manual_seed(seed)
        model = load_model("tiny", head="pretraining", **tiny_recipe(corpus, tmp_path).model.overrides)
        model.save_pretrained(tmp_path / name)
        return tmp_path / name

    a, b = folder("A", 0), folder("B", 1)
    shutil.copytree(a, tmp_path / "copy-of-A")
    shared = tmp_path / "set"
    assert main(["masks", "prune", "--model", str(a), "--data", str(corpus["train"]), "--out", str(shared),
                 "--scorer", "magnitude", "--sparsity", "0.5", "--min-utterances", "2"]) == 0
    common = ["masks.scorer=magnitude", f"masks.dir={shared}"]
    with pytest.raises(MaskError, match=rf"the set has base_model={a} \(weights sha256 \w{{12}}\); the recipe asks "
                                        rf"base_model={b} \(weights sha256 \w{{12}}\)"):
        pretrain(tiny_recipe(corpus, tmp_path / "b", *common, f"model.name={b}"), progress=False)
    # the same weights in another folder are the same base model
    pretrain(tiny_recipe(corpus, tmp_path / "c", *common, f"model.name={tmp_path / 'copy-of-A'}"), progress=False)


def test_mask_dir_with_files_but_no_config_is_never_overwritten(tmp_path, corpus):
    from lasp.train.pretrain import pretrain

    mine = tmp_path / "my-masks"
    mine.mkdir()
    save_file({"w": torch.zeros(4, dtype=torch.uint8)}, str(mine / mask_file_name("es")))
    (mine / "notes.txt").write_text("my experiment\n")
    before = tree_hashes(mine)
    with pytest.raises(MaskError, match=r"my-masks holds mask files \(masks\.es\.safetensors\) but no mask_config"):
        pretrain(tiny_recipe(corpus, tmp_path / "a", f"masks.dir={mine}"), progress=False)
    assert main(["masks", "prune", "--model", "tiny", "--data", str(corpus["train"]), "--out", str(mine),
                 "--min-utterances", "2"]) == 1
    assert tree_hashes(mine) == before
    assert not (tmp_path / "a" / "pretrain-lasp" / "checkpoints").exists()


@pytest.fixture
def saved_set(tmp_path):
    torch.manual_seed(0)
    dense = {l: {"a.weight": torch.rand(16, 24) > 0.5, "b.weight": torch.rand(8, 16) > 0.3} for l in ("es", "de")}
    path = tmp_path / "set"
    LanguageMasks.from_dense(dense, base_model="tiny", scorer="random", sparsity=0.5).save(path)
    return path


def test_flipped_byte_in_a_mask_file_is_an_error(saved_set, capsys):
    path = Path(language_file(saved_set, "de"))
    data = bytearray(path.read_bytes())
    data[-3] ^= 0x10  # inside the tensor data: still a valid safetensors file
    path.write_bytes(bytes(data))
    with pytest.raises(MaskError, match=r"masks\.de\.\w+\.safetensors: corrupt or changed"):
        LanguageMasks.load(saved_set)
    LanguageMasks.load(saved_set, ["es"])  # the intact language still loads
    assert main(["masks", "info", str(saved_set)]) == 1
    assert path.name in capsys.readouterr().err
    # the recorded kept count catches it too, in a set written without checksums
    config = json.loads((saved_set / "mask_config.json").read_text())
    del config["checksums"]
    (saved_set / "mask_config.json").write_text(json.dumps(config))
    with pytest.raises(MaskError, match=r"masks\.de\.\w+\.safetensors: (keeps \d+ weights but mask_config.json "
                                        r"records|[\w.]+: corrupt zstd mask data)"):
        LanguageMasks.load(saved_set, ["de"])


@pytest.mark.parametrize("lang", ["/../../outside", "../x", "es/../../x", "es x", ""])
def test_language_names_in_a_crafted_config_cannot_leave_the_folder(saved_set, tmp_path, lang):
    # a file outside the set that a crafted name would reach: <set>/masks./../../outside.safetensors
    (saved_set / "masks.").mkdir(exist_ok=True)
    outside = tmp_path / "outside.safetensors"
    outside.write_bytes(Path(language_file(saved_set, "es")).read_bytes())
    config = json.loads((saved_set / "mask_config.json").read_text())
    config["languages"].append(lang)
    for key in ("sparsity", "kept"):
        config[key][lang] = config[key]["es"]
    config.pop("checksums")
    (saved_set / "mask_config.json").write_text(json.dumps(config))
    with pytest.raises(MaskError, match="language code .* is not valid"):
        LanguageMasks.load(saved_set)
    with pytest.raises(MaskError, match="language code .* is not valid"):
        LanguageMasks.load(saved_set, [lang])


def test_prune_into_an_existing_set_keeps_other_languages_records(tmp_path, corpus, capsys):
    out = tmp_path / "set"
    base = ["masks", "prune", "--model", "tiny", "--data", str(corpus["train"]), "--out", str(out), "--min-utterances", "2"]
    assert main([*base, "--scorer", "magnitude", "--sparsity", "0.5"]) == 0
    before = tree_hashes(out)
    de_before = LanguageMasks.load(out, ["de"]).packed("de")
    again = [*base, "--langs", "es", "--scorer", "random", "--sparsity", "0.9"]
    capsys.readouterr()
    assert main(again) == 1
    assert "already holds a mask set" in capsys.readouterr().err
    assert tree_hashes(out) == before
    assert main([*again, "--append"]) == 0
    # de keeps its mask bit for bit (its file is re-coded against the new core: the core is every language's)
    masks = LanguageMasks.load(out)
    assert all(torch.equal(masks.packed("de")[n], de_before[n]) for n in de_before)
    rec = masks.records()
    assert (rec["de"]["scorer"], rec["de"]["sparsity"]) == ("magnitude", 0.5)
    assert (rec["es"]["scorer"], rec["es"]["sparsity"]) == ("random", 0.9)
    assert masks.metadata["scorer"] == "mixed"  # set-wide only when every language agrees
    assert masks.sparsity("es") == pytest.approx(0.9, abs=0.01) and masks.sparsity("de") == pytest.approx(0.5, abs=0.01)
    assert main(["masks", "info", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "oneshot/random sparsity 0.9" in printed and "oneshot/magnitude sparsity 0.5" in printed
    # --force replaces the whole set
    assert main([*base, "--langs", "de", "--scorer", "magnitude", "--sparsity", "0.3", "--force"]) == 0
    assert LanguageMasks.load(out).languages == ["de"] and not any(p.name.startswith("masks.es.")
                                                                   for p in out.iterdir())


def test_prune_checks_out_and_sparsity_before_scoring(tmp_path, corpus, capsys, monkeypatch):
    import lasp.search.methods

    def never(*a, **k):
        raise AssertionError("scored before the arguments were checked")

    monkeypatch.setattr(lasp.search.methods, "load_search_model", never)
    afile = tmp_path / "a-file"
    afile.write_text("x")
    base = ["masks", "prune", "--model", "tiny", "--data", str(corpus["train"]), "--min-utterances", "2"]
    for extra, expected in ((["--out", str(afile)], "is a file"),
                            (["--out", str(tmp_path / "m"), "--sparsity", "1.5"], "sparsity' must be in [0, 1)"),
                            (["--out", str(tmp_path / "m"), "--pattern", "4:2"], "key 'masks.pattern' must be")):
        capsys.readouterr()
        assert main([*base, *extra]) == 1
        assert expected in capsys.readouterr().err


def test_a_stray_language_tag_does_not_become_a_sub_network(tmp_path, corpus, capsys):
    from lasp.train.pretrain import pretrain

    rows = Path(corpus["train"]).read_text().splitlines()
    stray = json.loads(rows[0])
    stray["lang"] = "xx"
    manifest = Path(corpus["train"]).parent / "stray.jsonl"  # next to the audio its rows name
    manifest.write_text("\n".join(rows + [json.dumps(stray)]) + "\n")
    cfg = tiny_recipe({"train": manifest}, tmp_path / "a", "masks.min_utterances=3")
    with pytest.raises(DataError, match=r"language 'xx' has 1 row\(s\), fewer than masks.min_utterances=3"):
        pretrain(cfg, progress=False)
    assert not (tmp_path / "a" / "pretrain-lasp" / "masks-lasp" / "mask_config.json").exists()
    capsys.readouterr()
    assert main(["masks", "prune", "--model", "tiny", "--data", str(manifest), "--out", str(tmp_path / "m"),
                 "--min-utterances", "3"]) == 1
    assert "language 'xx' has 1 row(s), fewer than --min-utterances=3" in capsys.readouterr().err
    # a code that could name a path is refused where the manifest is read, with its line
    stray["lang"] = "../es"
    manifest.write_text("\n".join(rows + [json.dumps(stray)]) + "\n")
    with pytest.raises(DataError, match=rf"stray.jsonl:{len(rows) + 1}: 'lang': language code '../es' is not valid"):
        from lasp.data.manifest import read_manifest

        read_manifest(manifest)
