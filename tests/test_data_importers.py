"""Importers: a Common Voice release layout, generic tables, `datasets` saved to disk."""
from __future__ import annotations

import io
import json
import os

import numpy as np
import pytest
import soundfile as sf
from data_fixtures import make_commonvoice, tone, write_audio

from lasp.data.audio import load_audio, prepare_audio
from lasp.data.commonvoice import import_commonvoice
from lasp.data.dataset import SpeechDataset
from lasp.data.importers import import_hf_disk, import_table
from lasp.data.manifest import read_manifest
from lasp.errors import DataError

SENTENCES = {
    "sw": ["Habari ya asubuhi.", "Ninapenda kusoma vitabu.", 'Alisema "ndiyo" kwa sauti.', "Watoto wanacheza.",
           "Mvua inanyesha leo."],
    "tr": ["Merhaba dünya!", "İstanbul'da yaşıyorum.", "Bugün hava çok güzel.", "Kitap okumayı severim.",
           "Çay içer misin?"],
}


def test_commonvoice_layout_imports_and_decodes(tmp_path):
    root = make_commonvoice(str(tmp_path / "cv"), SENTENCES, missing=("common_voice_tr_1001.mp3",))
    paths = import_commonvoice(root, ["sw", "tr"], tmp_path / "manifests")
    assert set(paths) == {"train", "dev", "test"}
    train = read_manifest(paths["train"])
    # 3 train rows per language; the missing tr clip is skipped
    assert [(u.lang, u.text) for u in train] == [("sw", s) for s in SENTENCES["sw"][:3]] + \
        [("tr", SENTENCES["tr"][0]), ("tr", SENTENCES["tr"][2])]
    assert train[2].text == 'Alisema "ndiyo" kwa sauti.'  # quotes survive (TSV read without quoting)
    first = train[0]
    assert first.audio == os.path.join(root, "sw", "clips", "common_voice_sw_1000.mp3")  # referenced, not copied
    assert first.duration == pytest.approx(0.6, abs=0.06)  # from the mp3 header
    raw = json.loads(open(paths["train"], encoding="utf-8").readline())
    assert not os.path.isabs(raw["audio"])
    audio = load_audio(first.audio)
    assert audio.dtype == np.float32 and abs(len(audio) / 16000 - 0.6) < 0.06  # 48 kHz mp3 -> 16 kHz
    ds = SpeechDataset(paths["train"])
    assert ds.languages == ["sw", "tr"] and ds[4]["text"] == "bugün hava çok güzel"
    assert [len(read_manifest(paths[s])) for s in ("dev", "test")] == [2, 2]


def test_commonvoice_copy_audio_durations_file_and_errors(tmp_path):
    root = make_commonvoice(str(tmp_path / "cv"), {"sw": SENTENCES["sw"]})
    with open(os.path.join(root, "sw", "clip_durations.tsv"), "w", encoding="utf-8") as fh:
        fh.write("clip\tduration[ms]\n" + "".join(f"common_voice_sw_{1000 + i}.mp3\t{600 + 100 * i}\n"
                                                   for i in range(5)))
    paths = import_commonvoice(root, ["sw"], tmp_path / "out", copy_audio=True, splits=["train"])
    train = read_manifest(paths["train"])
    assert [u.duration for u in train] == [0.6, 0.7, 0.8]  # taken from clip_durations.tsv
    assert all(u.audio.startswith(str(tmp_path / "out" / "audio" / "sw")) and os.path.isfile(u.audio) for u in train)
    with pytest.raises(DataError, match="no such language folder.*found: sw"):
        import_commonvoice(root, ["xx"], tmp_path / "o2")
    os.remove(os.path.join(root, "sw", "clips", "common_voice_sw_1001.mp3"))
    with pytest.raises(DataError, match=r"sw/train\.tsv:3 \(.*common_voice_sw_1001\.mp3\): audio file not found"):
        import_commonvoice(root, ["sw"], tmp_path / "o3", on_bad="error")


def test_cli_import_commonvoice(tmp_path, capsys):
    from lasp.cli import main

    root = make_commonvoice(str(tmp_path / "cv"), SENTENCES)
    assert main(["data", "import-commonvoice", root, "--langs", "sw,tr", "--out", str(tmp_path / "m")]) == 0
    assert "train: 6 utterances" in capsys.readouterr().out


def test_import_table_with_column_mapping(tmp_path):
    write_audio(str(tmp_path / "wavs" / "a.wav"), tone(0.5))
    write_audio(str(tmp_path / "wavs" / "b.flac"), tone(0.8))
    (tmp_path / "meta.csv").write_text('file,transcript,locale\nwavs/a.wav,"Hello, world",en\n'
                                       'wavs/b.flac,Bonjour,fr\nwavs/gone.wav,lost,fr\n', encoding="utf-8")
    paths = import_table(tmp_path / "meta.csv", tmp_path / "out", split="validation",
                         columns={"audio": "file", "text": "transcript", "lang": "locale"})
    utts = read_manifest(paths["dev"])
    assert [(u.text, u.lang, u.duration) for u in utts] == [("Hello, world", "en", 0.5), ("Bonjour", "fr", 0.8)]
    with pytest.raises(DataError, match=r"no column 'path' for audio \(columns: file, transcript, locale\)"):
        import_table(tmp_path / "meta.csv", tmp_path / "out", columns={"audio": "path"})
    (tmp_path / "rows.jsonl").write_text(json.dumps({"wav": "wavs/a.wav", "text": "hi"}) + "\n", encoding="utf-8")
    paths = import_table(tmp_path / "rows.jsonl", tmp_path / "out2", columns={"audio": "wav"}, lang="en")
    assert read_manifest(paths["train"])[0].lang == "en"


def test_import_hf_disk_with_paths_and_bytes(tmp_path):
    import datasets

    write_audio(str(tmp_path / "hf" / "clip0.wav"), tone(0.4))
    buf = io.BytesIO()
    sf.write(buf, tone(0.7, 22050), 22050, format="FLAC")
    flac_bytes = buf.getvalue()
    by_path = datasets.Dataset.from_dict({"file": ["clip0.wav"], "sentence": ["uno"], "locale": ["es"]})
    by_bytes = datasets.Dataset.from_dict(
        {"file": [{"bytes": flac_bytes, "path": "x.flac"}, {"bytes": b"garbage", "path": "y.wav"}],
         "sentence": ["dos", "tres"], "locale": ["es", "es"]},
    ).cast_column("file", datasets.Audio())
    datasets.DatasetDict({"train": by_path}).save_to_disk(str(tmp_path / "hf" / "d1"))
    by_bytes.save_to_disk(str(tmp_path / "hf" / "d2"))
    cols = {"audio": "file", "text": "sentence", "lang": "locale"}
    p1 = import_hf_disk(tmp_path / "hf" / "d1", tmp_path / "o1", columns=cols, audio_root=tmp_path / "hf")
    u1 = read_manifest(p1["train"])
    assert [(u.text, u.duration) for u in u1] == [("uno", 0.4)]
    p2 = import_hf_disk(tmp_path / "hf" / "d2", tmp_path / "o2", columns=cols, split="validation")
    u2 = read_manifest(p2["dev"])  # the undecodable second row is skipped
    assert len(u2) == 1 and u2[0].audio.endswith(".flac") and u2[0].duration == pytest.approx(0.7)
    original, sr = sf.read(io.BytesIO(flac_bytes), dtype="float32")
    np.testing.assert_array_equal(load_audio(u2[0].audio), prepare_audio(original, sr))  # the bytes, unchanged
