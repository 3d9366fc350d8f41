"""The offline demo corpus: CLI, manifests that load, determinism, language errors."""
from __future__ import annotations

import hashlib
import os

import pytest

from lasp.data.dataset import SpeechDataset
from lasp.data.manifest import read_manifest
from lasp.data.synth import synthesize_corpus
from lasp.errors import ConfigError, DataError


def _digest(corpus_dir: str) -> dict[str, str]:
    out = {}
    for split in ("train", "dev", "test"):
        for utt in read_manifest(os.path.join(corpus_dir, f"{split}.jsonl")):
            with open(utt.audio, "rb") as fh:
                out[os.path.relpath(utt.audio, corpus_dir)] = hashlib.sha256(fh.read()).hexdigest() + utt.text
    return out


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    from lasp.cli import main

    out = str(tmp_path_factory.mktemp("synth") / "demo")
    assert main(["data", "synth", "--langs", "es,de,ru", "--minutes-per-lang", "1", "--test-utterances", "8",
                 "--dev-utterances", "4", "--out", out]) == 0
    return out


def test_cli_synth_writes_loadable_manifests(corpus):
    out = corpus
    train = SpeechDataset(os.path.join(out, "train.jsonl"), on_bad="error")
    assert train.languages == ["de", "es", "ru"]
    for lang, (n, hours) in train.hours_by_language().items():
        assert 60 <= hours * 3600 < 75, lang  # one minute, cut at the utterance that reaches it
    test = SpeechDataset(os.path.join(out, "test.jsonl"), on_bad="error")
    assert len(test) == 3 * 8 and len(read_manifest(os.path.join(out, "dev.jsonl"))) == 3 * 4
    item = train[0]
    assert item["input_values"].dtype.name == "float32" and 3 <= len(item["text"].split()) <= 7
    ru = next(u for u in train.utterances if u.lang == "ru")
    assert all("а" <= c <= "я" or c in " ё" for c in ru.text)  # Cyrillic words for Russian


def test_same_seed_gives_identical_audio_and_reruns_are_idempotent(corpus, tmp_path):
    out = corpus
    sizes = {"minutes_per_lang": 1, "test_utterances": 8, "dev_utterances": 4}  # the fixture's corpus
    again = synthesize_corpus(["es", "de", "ru"], tmp_path / "again", **sizes, workers=1)
    assert _digest(str(tmp_path / "again")) == _digest(out)  # bit-identical, whatever the worker count
    mtime = os.path.getmtime(again["train"])
    assert synthesize_corpus(["es", "de", "ru"], tmp_path / "again", **sizes) == again
    assert os.path.getmtime(again["train"]) == mtime  # nothing rewritten
    other = synthesize_corpus(["es"], tmp_path / "seed1", utterances_per_lang=4, dev_utterances=1,
                              test_utterances=1, seed=1)
    same_name = read_manifest(other["train"])[0]
    base = next(u for u in read_manifest(again["train"]) if u.uid == same_name.uid)
    assert same_name.text != base.text


def test_low_resource_languages_get_less_train_data(tmp_path):
    paths = synthesize_corpus(["es", "de"], tmp_path / "c", utterances_per_lang=10, dev_utterances=2,
                              test_utterances=3, low_resource=["de"], low_factor=5, workers=1)
    langs = [u.lang for u in read_manifest(paths["train"])]
    assert langs.count("es") == 10 and langs.count("de") == 2
    assert [u.lang for u in read_manifest(paths["test"])].count("de") == 3  # evaluation sets stay full


def test_languages_missing_from_either_library_are_named(tmp_path):
    with pytest.raises(DataError, match="language 'sw': wordfreq has no word list"):
        synthesize_corpus(["es", "sw"], tmp_path / "x", utterances_per_lang=2)
    with pytest.raises(DataError, match="language 'sh': espeak-ng has no voice"):
        synthesize_corpus(["sh"], tmp_path / "x", utterances_per_lang=2)
    with pytest.raises(ConfigError, match="low-resource language\\(s\\) fi not in --langs"):
        synthesize_corpus(["es"], tmp_path / "x", utterances_per_lang=2, low_resource=["fi"])
    assert not os.path.exists(tmp_path / "x" / "train.jsonl")
