"""Nothing a user gave lasp is overwritten or deleted without --append/--force; locks; re-synthesis."""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from data_fixtures import tone, write_audio

from lasp.cli import main
from lasp.data.manifest import read_manifest
from lasp.errors import DataError
from lasp.locks import LOCK_NAME, acquire, read_lock, release
from test_provenance_masks import tree_hashes


def _table(folder: Path, lang: str, n: int = 2) -> Path:
    for i in range(n):
        write_audio(str(folder / "wavs" / f"{lang}{i}.wav"), tone(0.3 + 0.1 * i, seed=i))
    table = folder / f"{lang}.tsv"
    table.write_text("path\tsentence\n" + "".join(f"wavs/{lang}{i}.wav\tfrase {i}\n" for i in range(n)))
    return table


def test_import_table_appends_a_language_only_when_asked(tmp_path, capsys):
    out = tmp_path / "corpus"
    cmd = ["data", "import-table", "--out", str(out), "--column", "audio=path", "--column", "text=sentence"]
    es, de = _table(tmp_path, "es"), _table(tmp_path, "de")
    assert main([*cmd, str(es), "--lang", "es"]) == 0
    first = (out / "train.jsonl").read_bytes()
    before = tree_hashes(tmp_path)
    capsys.readouterr()
    assert main([*cmd, str(de), "--lang", "de"]) == 1
    assert "train.jsonl already exists; add --append" in capsys.readouterr().err
    assert tree_hashes(tmp_path) == before
    assert main([*cmd, str(de), "--lang", "de", "--append"]) == 0
    data = (out / "train.jsonl").read_bytes()
    assert data.startswith(first)  # the rows the user had are byte-for-byte where they were
    assert [u.lang for u in read_manifest(out / "train.jsonl")] == ["es", "es", "de", "de"]
    # appending a language that is already there would duplicate it
    capsys.readouterr()
    assert main([*cmd, str(de), "--lang", "de", "--append"]) == 1
    assert "already has language(s) de" in capsys.readouterr().err
    assert (out / "train.jsonl").read_bytes() == data
    assert main([*cmd, str(de), "--lang", "de", "--force"]) == 0
    assert [u.lang for u in read_manifest(out / "train.jsonl")] == ["de", "de"]


def test_hf_bytes_never_overwrite_an_earlier_import(tmp_path):
    import datasets

    from lasp.data.importers import import_hf_disk

    def saved(name, seed):
        data = open(write_audio(str(tmp_path / f"{name}.wav"), tone(0.4, seed=seed)), "rb").read()
        ds = datasets.Dataset.from_dict({"audio": [data], "text": ["hola"], "lang": [name]})
        ds.save_to_disk(str(tmp_path / f"ds-{name}"))
        return tmp_path / f"ds-{name}"

    out = tmp_path / "out"
    import_hf_disk(saved("es", 0), out)
    kept = tree_hashes(out / "audio")
    import_hf_disk(saved("pt", 1), out, existing="append")  # same row number, same split folder
    after = tree_hashes(out / "audio")
    assert all(after[k] == v for k, v in kept.items()) and len(after) == 2
    assert len({u.audio for u in read_manifest(out / "train.jsonl")}) == 2


def test_resynthesis_touches_only_files_it_made(tmp_path):
    from lasp.data.synth import synthesize_corpus

    out = tmp_path / "demo"
    kw = dict(utterances_per_lang=2, dev_utterances=1, test_utterances=1, workers=1)
    synthesize_corpus(["es"], out, seed=0, **kw)
    mine = out / "audio" / "es" / "my_recording.flac"
    write_audio(str(mine), tone(0.2))
    (out / "notes.txt").write_text("keep me\n")
    user = {p: tree_hashes(out)[p] for p in ("audio/es/my_recording.flac", "notes.txt")}
    record = json.loads((out / "synth.json").read_text())
    assert record["complete"] and "audio/es/train_000000.flac" in record["files"]
    assert "audio/es/my_recording.flac" not in record["files"]
    # a corpus once made is read by others: other settings are refused, and replace it only when asked
    with pytest.raises(DataError, match=r"holds a corpus lasp data synth made with other settings \(seed 0, "
                                        r"asked 1\).*--force"):
        synthesize_corpus(["es"], out, seed=1, **kw)
    assert tree_hashes(out)["synth.json"] and json.loads((out / "synth.json").read_text()) == record
    synthesize_corpus(["es"], out, seed=1, replace=True, **kw)  # our old files go, the user's stay
    now = tree_hashes(out)
    assert all(now[p] == h for p, h in user.items())
    assert len(read_manifest(out / "train.jsonl")) == 2
    # a file in the way of one we would write is the user's: refused, not overwritten
    victim = out / "audio" / "es" / "dev_000000.flac"
    record = json.loads((out / "synth.json").read_text())
    record["files"].remove("audio/es/dev_000000.flac")
    (out / "synth.json").write_text(json.dumps(record))
    before = tree_hashes(out)
    with pytest.raises(DataError, match=r"dev_000000\.flac exists and was not made by lasp data synth"):
        synthesize_corpus(["es"], out, seed=2, replace=True, **kw)
    assert victim.is_file() and tree_hashes(out)[str(victim.relative_to(out))] == before[str(victim.relative_to(out))]
    # manifests lasp did not make are refused too
    other = tmp_path / "theirs"
    other.mkdir()
    (other / "train.jsonl").write_text("")
    with pytest.raises(DataError, match="that lasp data synth did not make"):
        synthesize_corpus(["es"], other, seed=0, **kw)


def test_lock_holder_is_named_and_released(tmp_path):
    d = tmp_path / "run"
    d.mkdir()
    acquire(d, "run directory")
    acquire(d, "run directory")  # re-entrant within a process
    holder = read_lock(d)
    assert holder["pid"] == os.getpid() and holder["host"]
    child = subprocess.run([sys.executable, "-c", "import sys; from lasp.locks import acquire; acquire(sys.argv[1])",
                            str(d)], capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(Path(__file__).resolve().parents[1])})
    assert child.returncode != 0 and f"is in use by another lasp process (pid {os.getpid()}" in child.stderr
    release(d)
    assert (d / LOCK_NAME).exists()
    release(d)
    assert not (d / LOCK_NAME).exists()
    # a lock file nobody holds (its writer died) is only a record: no guessing from its pid or host
    for record in ({"pid": 2 ** 22 + 12345, "host": read_host(), "started": "x"},
                   {"pid": 1, "host": "elsewhere", "started": "x"}):
        (d / LOCK_NAME).write_text(json.dumps(record))
        acquire(d)
        assert read_lock(d)["pid"] == os.getpid()
        release(d)


def read_host() -> str:
    import socket

    return socket.gethostname()


def test_a_folder_made_only_for_a_lock_goes_with_it_and_nothing_else_does(tmp_path):
    made = tmp_path / "new" / "masks"
    acquire(made, "mask set")
    release(made)
    assert not (tmp_path / "new").exists()  # every folder the lock needed, and only those
    assert tmp_path.is_dir()
    written = tmp_path / "written"
    acquire(written)
    (written / "mask_config.json").write_text("{}")
    release(written)
    assert (written / "mask_config.json").is_file() and not (written / LOCK_NAME).exists()
    existing = tmp_path / "existing"
    existing.mkdir()
    acquire(existing)
    release(existing)
    assert existing.is_dir()  # the user's empty folder stays


def test_importers_refuse_language_codes_that_could_name_a_path(tmp_path):
    from lasp.data.importers import import_table

    write_audio(str(tmp_path / "a.wav"), tone(0.3))
    (tmp_path / "t.tsv").write_text("audio\ttext\tlang\na.wav\thola\tes\na.wav\thola\t../x\n")
    paths = import_table(tmp_path / "t.tsv", tmp_path / "out")
    assert [u.lang for u in read_manifest(paths["train"])] == ["es"]
    with pytest.raises(DataError, match=r"t.tsv:3 .*language code '../x' is not valid"):
        import_table(tmp_path / "t.tsv", tmp_path / "out2", on_bad="error")
