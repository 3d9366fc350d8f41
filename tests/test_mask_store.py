"""The mask-set files: a shared core plus per-language deltas, coded; bit-exact round trips in every codec; format-1
folders still load; a save that is killed or runs out of disk leaves the set as it was and is cleaned up."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from lasp.errors import MaskError, StorageError
from lasp.masks.bits import unpack_bits
from lasp.masks.codecs import CODECS
from lasp.masks.language_masks import LanguageMasks
from lasp.io import TMP_PREFIX
from lasp.masks.store import (CONFIG_NAME, SAVE_MARKER, check_mask_dir, files_of, language_file, read_core,
                              stored_bytes)

FORMAT1 = Path(__file__).parent / "data" / "masks-format1"
ROOT = Path(__file__).resolve().parents[1]


def format1_dense() -> dict:
    """The masks tests/data/masks-format1 was written with (by lasp before the shared core, format 1)."""
    torch.manual_seed(0)
    return {l: {"encoder.layers.0.attention.q_proj.weight": torch.rand(16, 24) > 0.4,
                "encoder.layers.0.feed_forward.output_dense.weight": torch.rand(8, 20) > 0.6} for l in ("es", "de")}


def same(a: LanguageMasks, b: LanguageMasks) -> bool:
    return a.languages == b.languages and all(torch.equal(a[l][n], b[l][n]) for l in a.languages for n in a[l])


def overlapping(langs=("es", "de", "ru"), shape=(64, 40), shared=0.45, own=0.08, seed=0) -> LanguageMasks:
    """Masks that share most of their weights, as language masks of one model do."""
    gen = torch.Generator().manual_seed(seed)
    common = torch.rand(shape, generator=gen) < shared
    dense = {l: {"a.weight": common | (torch.rand(shape, generator=gen) < own),
                 "b.weight": torch.rand(shape[0], 12, generator=gen) < 0.5} for l in langs}
    return LanguageMasks.from_dense(dense, base_model="m", scorer="random", sparsity=0.5)


def test_a_format1_folder_still_loads_and_saves_as_format2(tmp_path):
    assert json.loads((FORMAT1 / CONFIG_NAME).read_text())["format_version"] == 1
    expected = LanguageMasks.from_dense(format1_dense())
    old = LanguageMasks.load(FORMAT1)
    assert same(old, expected) and old.records()["es"]["scorer"] == "random"
    assert same(LanguageMasks.load(FORMAT1, ["de"]), expected.subset(["de"]))
    # adding a language to a copy converts the folder: the format-1 files go, every language is kept
    copy = tmp_path / "set"
    shutil.copytree(FORMAT1, copy)
    extra = LanguageMasks.from_dense({"ru": {n: ~m for n, m in format1_dense()["es"].items()}})
    extra.save(copy)
    merged = LanguageMasks.load(copy)
    assert merged.languages == ["ru", "es", "de"] and same(merged.subset(["es", "de"]), expected)
    assert json.loads((copy / CONFIG_NAME).read_text())["format_version"] == 2
    assert sorted(p.name for p in copy.iterdir()) == sorted([CONFIG_NAME, *files_of(json.loads(
        (copy / CONFIG_NAME).read_text()))])


@pytest.mark.parametrize("codec", CODECS)
def test_every_codec_round_trips_bit_exact(tmp_path, codec):
    shape = (8, 20)  # 20 is not a multiple of 8: padded rows
    dense = {"es": {"w": torch.zeros(shape, dtype=torch.bool), "v": torch.ones(3, 9, dtype=torch.bool)},
             "de": {"w": torch.rand(shape) > 0.5, "v": torch.ones(3, 9, dtype=torch.bool)},
             "ru": {"w": torch.ones(shape, dtype=torch.bool), "v": torch.rand(3, 9) > 0.9}}
    masks = LanguageMasks.from_dense(dense)
    masks.save(tmp_path, codec=codec)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["storage"]["codec"] == codec
    assert same(LanguageMasks.load(tmp_path), masks)


def test_core_is_what_most_languages_keep_and_one_language_reads_core_and_its_delta(tmp_path):
    masks = overlapping()
    masks.save(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    core = read_core(str(tmp_path), config)
    for name, shape in masks.shapes.items():
        votes = sum(masks[l][name].int() for l in masks.languages)
        assert torch.equal(unpack_bits(core[name], shape), votes >= 2)  # 2 of 3
    for lang in ("es", "ru"):
        os.remove(language_file(tmp_path, lang))  # would fail if it were read
    assert same(LanguageMasks.load(tmp_path, ["de"]), masks.subset(["de"]))
    os.remove(tmp_path / config["storage"]["core"]["file"])
    with pytest.raises(MaskError, match=r"masks-core\.\w+\.safetensors is missing"):
        LanguageMasks.load(tmp_path, ["de"])


def test_delta_coding_stores_overlapping_masks_in_fewer_bytes(tmp_path):
    masks = overlapping(langs=("es", "de", "ru", "it", "tr"), shape=(256, 512))
    for codec in ("packed", "zstd"):
        masks.save(tmp_path / codec, codec=codec)
    raw = len(masks) * sum((s[0] * ((s[1] + 7) // 8)) for s in masks.shapes.values())
    packed, coded = stored_bytes(tmp_path / "packed"), stored_bytes(tmp_path / "zstd")
    # plain packed bits: core + deltas cost one bit per weight more than the languages alone
    assert packed["total"] > raw
    # coded, the sparse deltas shrink: the whole set takes well under one bit per weight per language
    assert coded["total"] < 0.75 * raw, (coded, raw)


def _failing_writer(after: int):
    from safetensors.torch import save_file

    calls = {"n": 0}

    def write(tensors, filename, metadata=None):
        calls["n"] += 1
        if calls["n"] > after:
            from safetensors import SafetensorError
            raise SafetensorError("Error while serializing: IoError(Os { code: 28, kind: StorageFull, "
                                  'message: "No space left on device" })')
        return save_file(tensors, filename, metadata=metadata)

    write.calls = calls
    return write


def test_a_full_disk_mid_save_leaves_the_set_as_it_was(tmp_path, monkeypatch):
    first = overlapping(langs=("es", "de", "ru"))
    first.save(tmp_path)
    assert json.loads((tmp_path / CONFIG_NAME).read_text())["storage"]["core"]["kept_by"] == "majority"
    before = sorted(p.name for p in tmp_path.iterdir())
    writer = _failing_writer(after=2)  # a new core and one delta, then the disk is full
    monkeypatch.setattr("lasp.masks.store.save_file", writer)
    with pytest.raises(StorageError, match="No space left on device"):
        overlapping(langs=("it", "tr"), seed=1).save(tmp_path)
    assert writer.calls["n"] == 3
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing half-written stays behind
    assert same(LanguageMasks.load(tmp_path), first)
    monkeypatch.undo()
    overlapping(langs=("it", "tr"), seed=1).save(tmp_path)
    assert LanguageMasks.load(tmp_path).languages == ["it", "tr", "es", "de", "ru"]


KILLED_SAVE = textwrap.dedent("""
    import os, sys, torch
    sys.path.insert(0, sys.argv[2])
    from test_mask_store import overlapping
    import lasp.masks.store as store
    from safetensors.torch import save_file
    calls = {"n": 0}
    def write(tensors, filename, metadata=None):
        calls["n"] += 1
        save_file(tensors, filename, metadata=metadata)
        if calls["n"] == int(sys.argv[3]):
            os._exit(9)  # killed between two files: no cleanup runs
    store.save_file = write
    overlapping(langs=("ru", "it"), seed=1).save(sys.argv[1])
""")


def _killed_save(directory: Path, after_files: int) -> None:
    env = {**os.environ, "PYTHONPATH": f"{ROOT}{os.pathsep}{os.environ.get('PYTHONPATH', '')}"}
    proc = subprocess.run([sys.executable, "-c", KILLED_SAVE, str(directory), str(Path(__file__).parent),
                           str(after_files)], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 9, proc.stderr[-2000:]


def test_a_killed_save_into_a_set_is_recovered(tmp_path):
    first = overlapping(langs=("es", "de"))
    first.save(tmp_path)
    _killed_save(tmp_path, after_files=2)
    assert (tmp_path / SAVE_MARKER).is_file()
    assert same(LanguageMasks.load(tmp_path), first)  # the config still names the old set
    check_mask_dir(tmp_path)  # what every save and search does first
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_NAME, *files_of(config)])
    overlapping(langs=("ru", "it"), seed=1).save(tmp_path)
    assert LanguageMasks.load(tmp_path).languages == ["ru", "it", "es", "de"]


def test_a_save_killed_while_writing_its_record_leaves_nothing_after_the_next_check(tmp_path):
    first = overlapping(langs=("es", "de"))
    first.save(tmp_path)
    # what a kill during the first write of a save leaves: the record's temporary file, no record
    (tmp_path / f"{TMP_PREFIX}{SAVE_MARKER}.k1ll3d").write_text('{"writing": [')
    check_mask_dir(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([CONFIG_NAME, *files_of(config)])
    assert same(LanguageMasks.load(tmp_path), first)


def test_a_killed_first_save_does_not_wedge_the_folder(tmp_path):
    out = tmp_path / "masks"
    out.mkdir()
    _killed_save(out, after_files=2)
    assert not (out / CONFIG_NAME).exists() and any(p.name.startswith("masks") for p in out.iterdir())
    overlapping(langs=("es",)).save(out)  # the rerun: recovers, then saves
    assert LanguageMasks.load(out).languages == ["es"]
    assert sorted(p.name for p in out.iterdir()) == sorted([CONFIG_NAME, *files_of(json.loads(
        (out / CONFIG_NAME).read_text()))])
    # a folder an earlier lasp left without its config (no record of the save): refused, and --force clears it
    legacy = tmp_path / "legacy"
    shutil.copytree(FORMAT1, legacy)
    os.remove(legacy / CONFIG_NAME)
    with pytest.raises(MaskError, match="left by an interrupted save: --force removes them"):
        check_mask_dir(legacy)
    check_mask_dir(legacy, replace=True)
    assert list(legacy.iterdir()) == []


def test_independent_masks_are_stored_without_a_core(tmp_path):
    """Masks that share little (the random-mask control) would cost more against a majority core."""
    gen = torch.Generator().manual_seed(0)
    dense = {l: {"w": torch.rand(256, 512, generator=gen) < 0.5} for l in ("es", "de", "ru", "it")}
    LanguageMasks.from_dense(dense).save(tmp_path)
    config = json.loads((tmp_path / CONFIG_NAME).read_text())
    assert config["storage"]["core"]["kept_by"] == "none"
    assert stored_bytes(tmp_path)["total"] < 1.02 * 4 * 256 * 512 / 8 + 4 * 1024  # about the raw bits + headers
    assert same(LanguageMasks.load(tmp_path), LanguageMasks.from_dense(dense))


def test_removing_a_language_recodes_the_rest_bit_exact(tmp_path):
    masks = overlapping(langs=("es", "de", "ru"))
    masks.save(tmp_path / "three")
    masks.subset(["de", "ru"]).save(tmp_path / "two")
    assert same(LanguageMasks.load(tmp_path / "two"), masks.subset(["de", "ru"]))


def test_mask_arithmetic_in_the_api_and_the_cli(tmp_path, capsys):
    from lasp.cli import main

    masks = overlapping(langs=("es", "de", "ru"))
    es, de, ru = (masks[l] for l in ("es", "de", "ru"))
    diff = masks.difference(["es", "de"], ["ru"])
    only_es = masks.exclusive("es")
    for n in es:
        assert torch.equal(diff[n], (es[n] | de[n]) & ~ru[n])
        assert torch.equal(only_es[n], es[n] & ~de[n] & ~ru[n])
    assert masks.count(masks.exclusive("es", others=["de"])) == sum(int((es[n] & ~de[n]).sum()) for n in es)
    masks.save(tmp_path / "set")
    capsys.readouterr()
    assert main(["masks", "exclusive", str(tmp_path / "set"), "--lang", "es", "--out", str(tmp_path / "x"),
                 "--name", "es_only"]) == 0
    assert f"{masks.count(only_es):,} of {masks.numel():,}" in capsys.readouterr().out
    written = LanguageMasks.load(tmp_path / "x")
    assert written.languages == ["es_only"] and all(torch.equal(written["es_only"][n], only_es[n]) for n in es)
    assert main(["masks", "difference", str(tmp_path / "set"), "--langs", "es,de", "--minus", "ru"]) == 0
    assert f"{masks.count(diff):,} of" in capsys.readouterr().out
    assert main(["masks", "union", str(tmp_path / "set")]) == 1
    assert "needs --langs" in capsys.readouterr().err


def test_masks_size_compares_codecs(tmp_path, capsys):
    from lasp.analysis.mask_storage import storage_table
    from lasp.cli import main

    masks = overlapping(langs=("es", "de", "ru", "it"), shape=(256, 512))
    table = storage_table(masks, load_times=False)
    raw = table["raw_per_language"]
    assert table["codecs"]["packed"]["alone_per_language"] == raw
    assert table["codecs"]["packed"]["total"] == 5 * raw  # core + 4 deltas, one bit per weight each
    zstd = table["codecs"]["zstd"]
    assert zstd["per_language"] < 0.75 * raw and zstd["per_language"] < zstd["alone_per_language"]
    # the majority core leaves fewer bits to code than the intersection (masks that share most, not all)
    assert zstd["per_language"] < table["codecs"]["zstd, intersection core"]["per_language"]
    masks.save(tmp_path / "set")
    capsys.readouterr()
    assert main(["masks", "size", str(tmp_path / "set"), "--codecs", "packed,zstd", "--json",
                 str(tmp_path / "size.json")]) == 0
    out = capsys.readouterr().out
    assert "| zstd |" in out and "| packed |" in out and "load one language" in out
    assert set(json.loads((tmp_path / "size.json").read_text())["codecs"]) == {"packed", "zstd",
                                                                                 "zstd, intersection core"}
