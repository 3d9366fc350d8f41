"""Every kind of bad row is reported with its manifest row and path: skipped and counted, or raised."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
import soundfile as sf
from data_fixtures import tone, write_audio

from data_fixtures import tiny_config

from lasp.data.collate import CTCCollator
from lasp.data.dataset import SpeechDataset
from lasp.data.manifest import read_manifest
from lasp.data.text import Vocabulary
from lasp.errors import DataError

# (file name, how to make it, text, lang, reason found by check(), reason found only by decoding)
CASES = [
    ("good.flac", "tone", "hola amigo", "es", None, None),
    ("missing.flac", None, "hola", "es", "missing_file", None),
    ("empty.wav", "empty", "hola", "es", "empty_audio", None),
    ("silent.flac", "silent", "hola", "es", None, "silent_audio"),
    ("corrupt.mp3", "corrupt", "hola", "es", "unreadable_audio", None),
    ("notes.flac", "text", "hola", "es", "unreadable_audio", None),
    ("nan.wav", "nan", "hola", "es", None, "nan_samples"),
    ("long.flac", "long", "hola", "es", "too_long", None),
    ("notext.flac", "tone", " ¿?! ", "es", "empty_text", None),
    ("oov.flac", "tone", "hola ñandú", "es", "unknown_chars", None),
    ("lang.flac", "tone", "hola", "xx", "unknown_language", None),
    # 200 characters for 0.5 s: more than its 25 frames of 20 ms can emit
    ("wordy.flac", "tone", "hola " * 40, "es", "text_too_long", None),
]


def _make(path: str, kind: str | None) -> None:
    if kind == "tone":
        write_audio(path, tone(0.5))
    elif kind == "empty":
        sf.write(path, np.zeros(0, np.float32), 16000, format="WAV")
    elif kind == "silent":
        write_audio(path, np.zeros(8000, np.float32))
    elif kind == "corrupt":
        with open(path, "wb") as fh:
            fh.write(bytes(np.random.default_rng(0).integers(0, 256, 4000, dtype=np.uint8)))
    elif kind == "text":
        with open(path, "w", encoding="utf-8") as fh:
            fh.write("this is not audio\n" * 50)
    elif kind == "nan":
        x = tone(0.5)
        x[100:110] = np.nan
        sf.write(path, x, 16000, format="WAV", subtype="FLOAT")
    elif kind == "long":
        write_audio(path, tone(3.0))


@pytest.fixture()
def manifest(tmp_path):
    rows = []
    os.makedirs(tmp_path / "audio")
    for name, kind, text, lang, _, _ in CASES:
        if kind:
            _make(str(tmp_path / "audio" / name), kind)
        rows.append({"audio": f"audio/{name}", "text": text, "lang": lang, "duration": None})
    path = tmp_path / "train.jsonl"
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    return str(path)


def _dataset(manifest, **kw):
    vocab = Vocabulary.build(["hola amigo"])
    return SpeechDataset(read_manifest(manifest), vocab=vocab, max_seconds=2.0, known_languages={"es", "de"}, **kw)


def test_skip_policy_counts_each_bad_row_with_row_and_path(manifest):
    ds = _dataset(manifest)
    report = ds.report()
    found = {b.row: b for b in report.bad}
    for row, (name, _, _, _, reason, _) in enumerate(CASES, start=1):
        if reason is None:
            assert row not in found
            continue
        bad = found[row]
        assert bad.reason == reason, name
        assert str(bad).startswith(f"{manifest}:{row} (") and name in str(bad)
    assert len(ds) == 3  # good, silent and NaN pass the cheap checks
    assert report.total == len(CASES)
    summary = ds.summary()
    assert summary.startswith(f"skipped 9 of {len(CASES)} rows") and "missing" in summary and "empty transcript" in summary


def test_decode_time_failures_are_skipped_by_the_collator_and_counted(manifest):
    ds = _dataset(manifest)
    items = [ds[i] for i in range(len(ds))]
    assert ["skipped" in it for it in items] == [False, True, True]  # good, silent, NaN
    assert {b.reason for b in ds.report().bad} >= {"silent_audio", "nan_samples"}
    nan_row = next(b for b in ds.report().bad if b.reason == "nan_samples")
    assert nan_row.row == 7 and nan_row.audio.endswith("nan.wav")
    batch = CTCCollator(tiny_config(), pad_id=0, normalize=True)(items)
    assert batch["input_values"].shape[0] == 1 and batch["langs"] == ["es"]
    assert [b.reason for b in batch["skipped"]] == ["silent_audio", "nan_samples"]  # for the training process


def test_rows_with_manifest_durations_open_no_audio_header(tmp_path, monkeypatch):
    """Durations in the manifest: the up-front check only looks the files up (at Common Voice scale every stage
    and rank would otherwise open every clip before the first step)."""
    from test_train_support import make_corpus

    from lasp.data import dataset as dataset_module

    manifests = make_corpus(tmp_path, langs=("es",), n_train=3, n_test=1)

    def opened(path):
        raise AssertionError(f"opened the header of {path}")

    monkeypatch.setattr(dataset_module, "audio_info", opened)
    ds = SpeechDataset(read_manifest(manifests["train"]))
    assert len(ds) == 3 and ds[0]["input_values"].size > 0


def test_full_decode_check_finds_everything_up_front(manifest):
    ds = _dataset(manifest, check=False)
    report = ds.check(decode=True)
    assert len(ds) == 1 and len(report) == len(CASES) - 1
    assert {b.reason for b in report.bad} == {c[4] or c[5] for c in CASES[1:]}


@pytest.mark.parametrize("row", [r for r, c in enumerate(CASES, start=1) if c[4]])
def test_error_policy_raises_naming_row_and_path(manifest, row):
    name = CASES[row - 1][0]
    utts = read_manifest(manifest)
    with pytest.raises(DataError) as err:
        SpeechDataset([utts[0], utts[row - 1]], vocab=Vocabulary.build(["hola amigo"]), max_seconds=2.0,
                      known_languages={"es"}, on_bad="error")
    assert f"train.jsonl:{row} (" in str(err.value) and name in str(err.value)


def test_error_policy_at_decode_time_names_the_file(manifest):
    utts = read_manifest(manifest)
    ds = SpeechDataset([utts[0], utts[3], utts[6]], on_bad="error")  # pass the cheap checks, fail decoding
    assert ds[0] is not None
    with pytest.raises(DataError, match=r"train\.jsonl:4 \(.*silent\.flac\): audio is silent"):
        ds[1]
    with pytest.raises(DataError, match=r"train\.jsonl:7 \(.*nan\.wav\): audio contains 10 NaN/inf samples"):
        ds[2]


def test_info_command_lists_bad_rows(manifest, capsys):
    from lasp.cli import main

    assert main(["data", "info", manifest, "--decode", "--max-seconds", "2", "--known-languages", "es"]) == 0
    out = capsys.readouterr().out
    assert "2 usable of 12 rows" in out and "silent.flac" in out and "missing.flac" in out
    assert "wordy.flac): a transcript of 199 characters for 0.50 s of audio (at most 25" in out


@pytest.mark.parametrize("rows, message", [
    ([{"id": "a"}, {"id": "b"}, {"id": "a"}], r"m\.jsonl:3: id 'a' was already given at line 1"),
    ([{"lang": "es"}, {"lang": "de"}, {"lang": "ES"}], r"m\.jsonl:3: language code 'ES' differs from 'es' \(line 1\) "
                                                       r"only in case"),
    ([{}, {"duration": -1.0}], r"m\.jsonl:2: 'duration' must be a number of seconds >= 0, got -1\.0"),
])
def test_manifest_rows_that_cannot_all_be_right_are_refused(tmp_path, rows, message):
    lines = [json.dumps({"audio": f"{i}.wav", "text": "hola", "lang": "es", **row}) for i, row in enumerate(rows)]
    (tmp_path / "m.jsonl").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        read_manifest(tmp_path / "m.jsonl")


def test_evaluation_refuses_two_rows_with_one_utterance_id(tmp_path):
    from lasp.train.evaluate import check_unique_ids

    for folder in ("a", "b"):
        write_audio(str(tmp_path / folder / "x.wav"), tone(0.5))
    # no id field: the id is <lang>/<file name>, the same for both rows
    (tmp_path / "t.jsonl").write_text("".join(json.dumps({"audio": f"{f}/x.wav", "text": "hola", "lang": "es"}) + "\n"
                                              for f in ("a", "b")))
    with pytest.raises(DataError, match=r"t\.jsonl:2 .*: utterance id 'es/x' repeats line 1"):
        check_unique_ids(read_manifest(tmp_path / "t.jsonl"))
