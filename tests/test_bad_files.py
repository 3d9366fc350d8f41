"""Files that are not what lasp expects get one line naming the file and what is wrong, never a traceback: mask
configs of another shape, model folders with a broken config or crafted weights, a model of another kind; and
what lasp writes is as readable as any file (0644 under umask 022)."""
from __future__ import annotations

import json
import os
import re
import struct

import pytest

from lasp.cli import main


@pytest.fixture
def mask_set(random_masks, tmp_path):
    random_masks.save(tmp_path / "set")
    return tmp_path / "set"


@pytest.mark.parametrize("change, message", [
    (lambda c: c.update(format_version="v2"), r"'format_version' must be an integer, got 'v2'"),
    (lambda c: c.update(languages="es,de"), r"key 'languages' must be a list of language codes, got 'es,de'"),
    (lambda c: c.update(parameters=["a"]), r"key 'parameters' must be a mapping of parameter name to shape"),
    (lambda c: ["es", "de"], r"not a lasp mask config \(a JSON object\), got a JSON list"),
])
def test_a_mask_config_of_another_shape_is_one_line(mask_set, capsys, change, message):
    path = mask_set / "mask_config.json"
    config = json.loads(path.read_text())
    changed = change(config)
    path.write_text(json.dumps(config if changed is None else changed))
    assert main(["masks", "info", str(mask_set)]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and f"{path}: " in err
    assert re.search(message, err), err


def test_masks_info_claims_no_verification_it_did_not_make(mask_set, capsys):
    assert main(["masks", "info", str(mask_set)]) == 0
    assert "files verified against their recorded sha256" in capsys.readouterr().out
    path = mask_set / "mask_config.json"
    config = json.loads(path.read_text())
    del config["checksums"]["de"]  # as an earlier lasp wrote it, for one language
    path.write_text(json.dumps(config))
    assert main(["masks", "info", str(mask_set)]) == 0
    out = capsys.readouterr().out
    assert "verified" not in out.replace("not verified", "")
    assert "no sha256 recorded for de (written by an earlier lasp): those files are not verified" in out


def _wav2vec2_folder(path, tiny_pretraining):
    tiny_pretraining.save_pretrained(path)
    return path


def _crafted_header(folder):
    with open(folder / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", 2 ** 62) + b"{garbage" + b"\0" * 64)


def _header_past_the_end(folder):
    head = json.dumps({"wav2vec2.masked_spec_embed": {"dtype": "F32", "shape": [1 << 30],
                                                      "data_offsets": [0, 4 << 30]}}).encode()
    with open(folder / "model.safetensors", "wb") as fh:
        fh.write(struct.pack("<Q", len(head)) + head + b"\0" * 16)


def _bert(folder):
    from transformers import BertConfig, BertModel

    for f in folder.iterdir():
        f.unlink()
    BertModel(BertConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
                         vocab_size=50)).save_pretrained(folder)


@pytest.mark.parametrize("spoil, names, message", [
    (lambda d: (d / "config.json").write_text('{"model_type": "wav2vec2",,,\n'), "config.json",
     "not a readable model config"),
    (_crafted_header, "model.safetensors", "cannot load model.safetensors"),
    (_header_past_the_end, "model.safetensors", "cannot load model.safetensors"),
    (_bert, "config.json", "model_type 'bert' is not a wav2vec2-family model"),
])
def test_a_model_folder_that_cannot_be_loaded_is_one_line(tiny_pretraining, tmp_path, capsys, spoil, names, message):
    from test_train_support import make_corpus

    corpus = make_corpus(tmp_path / "corpus", n_train=2, n_test=1)
    folder = _wav2vec2_folder(tmp_path / "model", tiny_pretraining)
    spoil(folder)
    assert main(["masks", "prune", "--model", str(folder), "--data", str(corpus["train"]), "--out",
                 str(tmp_path / "set"), "--scorer", "taylor", "--min-utterances", "1", "--batches", "1"]) == 1
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert str(folder) in err and names in err and message in err, err


def test_model_files_lasp_writes_are_ordinary_files(tmp_path, tiny_ctc):
    from lasp.models.system import System

    old = os.umask(0o022)
    try:
        System("shared", tiny_ctc).save_pretrained(tmp_path / "final")
    finally:
        os.umask(old)
    modes = {str(p.relative_to(tmp_path)): oct(p.stat().st_mode & 0o777) for p in (tmp_path / "final").rglob("*")}
    assert modes and all(m == ("0o755" if (tmp_path / p).is_dir() else "0o644") for p, m in modes.items()), modes
    assert "final/shared/model.safetensors" in modes


@pytest.mark.parametrize("content, message", [
    (None, r"x\.json: missing; run it again$"),
    (b'{"a": 1,,', r"x\.json: not a readable lasp thing \(not valid JSON: Expecting property name .*, line 1\); run"),
    (b"\xff\xfe\x00{", r"x\.json: not a readable lasp thing \(not valid JSON: "),
    (b"[1, 2]", r"x\.json: not a lasp thing \(a JSON object\), got a JSON list; run it again$"),
])
def test_a_json_file_lasp_reads_is_an_object_or_one_line_naming_it(tmp_path, content, message):
    from lasp.errors import ConfigError
    from lasp.io import read_json_if_present, read_json_object

    path = tmp_path / "x.json"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(ConfigError, match=message) as raised:
        read_json_object(path, "lasp thing", ConfigError, hint="run it again")
    assert len(str(raised.value).splitlines()) == 1
    assert read_json_if_present(path) == {}


def test_a_feature_extractor_config_that_is_no_object_is_one_line(tmp_path):
    from lasp.errors import ConfigError
    from lasp.models.features import feature_normalization

    (tmp_path / "preprocessor_config.json").write_text("[true]")
    with pytest.raises(ConfigError, match=r"preprocessor_config\.json: not a feature-extractor config \(a JSON "
                                          r"object\), got a JSON list"):
        feature_normalization(str(tmp_path))
