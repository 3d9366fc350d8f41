"""Audio decoding, manifests, text normalization, vocabulary and phonemes."""
from __future__ import annotations

import json

import numpy as np
import pytest
from data_fixtures import tone, write_audio

from lasp.data.audio import SAMPLE_RATE, audio_info, load_audio
from lasp.data.manifest import Utterance, read_manifest, write_manifest
from lasp.data.text import Vocabulary, normalize_text
from lasp.errors import DataError


def test_same_signal_decodes_alike_from_wav_flac_mp3_ogg(tmp_path):
    sr = 22050  # not 16 kHz, so every format goes through the resampler
    x = tone(1.0, sr)
    decoded = {fmt: load_audio(write_audio(str(tmp_path / f"s.{fmt}"), x, sr)) for fmt in ("wav", "flac", "mp3", "ogg")}
    ref = decoded["wav"]
    assert ref.dtype == np.float32 and ref.ndim == 1
    assert len(ref) == SAMPLE_RATE  # 1 s at 16 kHz
    np.testing.assert_allclose(decoded["flac"], ref, atol=1e-4)  # lossless up to 16-bit quantization
    for lossy in ("mp3", "ogg"):
        y = decoded[lossy]
        assert abs(len(y) - len(ref)) <= 0.01 * len(ref), lossy
        n = min(len(y), len(ref))
        # gapless mp3 decoding: aligned, so the waveforms correlate almost perfectly
        assert np.corrcoef(y[:n], ref[:n])[0, 1] > 0.99, lossy


def test_stereo_is_mixed_to_mono_and_resampled(tmp_path):
    left, right = tone(0.5, 44100, freq=200), tone(0.5, 44100, freq=300, seed=1)
    path = str(tmp_path / "st.wav")
    write_audio(path, np.stack([left, right], axis=1), 44100)
    info = audio_info(path)
    assert (info.channels, info.sample_rate) == (2, 44100) and abs(info.duration - 0.5) < 1e-3
    y = load_audio(path)
    assert len(y) == 8000
    mono_ref = load_audio(write_audio(str(tmp_path / "m.wav"), (left + right) / 2, 44100))
    np.testing.assert_allclose(y, mono_ref, atol=2e-4)


def test_manifest_round_trip_resolves_relative_paths(tmp_path):
    audio = write_audio(str(tmp_path / "corpus" / "audio" / "a.flac"), tone(0.3))
    utts = [Utterance(audio=audio, text="hola", lang="es", duration=0.3, id="es/a", extra={"speaker": "s1"})]
    path = write_manifest(tmp_path / "corpus" / "train.jsonl", utts)
    raw = json.loads(open(path, encoding="utf-8").readline())
    assert raw["audio"] == "audio/a.flac"  # stored relative to the manifest
    back = read_manifest(path)
    assert back[0].audio == audio and back[0].row == 1 and back[0].source == path
    assert (back[0].text, back[0].lang, back[0].duration, back[0].uid) == ("hola", "es", 0.3, "es/a")
    assert back[0].extra == {"speaker": "s1"}


@pytest.mark.parametrize("line, message", [
    ('{"audio": "a.wav", "text": "x"', "train.jsonl:2: malformed JSON"),
    ('{"audio": "a.wav", "text": "x"}', "train.jsonl:2: missing key(s) lang"),
    ('{"audio": "a.wav", "text": 3, "lang": "es"}', "train.jsonl:2: 'text' must be a string"),
    ('{"audio": "a.wav", "text": "x", "lang": "es", "duration": "long"}', "train.jsonl:2: 'duration' must be"),
    ('[1, 2]', "train.jsonl:2: expected a JSON object"),
])
def test_malformed_manifest_rows_name_file_and_line(tmp_path, line, message):
    path = tmp_path / "train.jsonl"
    path.write_text('{"audio": "a.wav", "text": "x", "lang": "es"}\n' + line + "\n", encoding="utf-8")
    with pytest.raises(DataError, match=message.replace("(", r"\(").replace(")", r"\)")):
        read_manifest(path)


def test_normalization_per_language():
    assert normalize_text("¿Qué tal?  Muy   BIEN, gracias!", "es") == "qué tal muy bien gracias"
    assert normalize_text("İstanbul'da IŞIK yandı.", "tr") == "istanbulda ışık yandı"  # dotted/dotless i
    assert normalize_text("I don’t know", "en") == "i don't know"  # word-internal apostrophe kept
    assert normalize_text("well-known “quotes”", "en") == "well known quotes"
    assert normalize_text("ﬁne Ⅻ", "en") == "fine xii"  # NFKC compatibility forms
    assert normalize_text("Straße 5%", "de", lowercase=False) == "Straße 5"
    assert normalize_text("a-b, c", "en", strip_punctuation=False) == "a-b, c"
    assert normalize_text("a-b", "en", keep="-") == "a-b"
    assert normalize_text("Привет, Мир!", "ru") == "привет мир"


def test_vocabulary_ids_tokenizer_parity_and_round_trip(tmp_path):
    from transformers import Wav2Vec2CTCTokenizer

    texts = [normalize_text(t, lang) for t, lang in [("Hola qué tal", "es"), ("Привет мир", "ru"), ("don't", "en")]]
    vocab = Vocabulary.build(texts)
    assert vocab.tokens[:3] == ["<pad>", "<unk>", "|"] and vocab.pad_id == 0
    assert Vocabulary.build(reversed(texts)) == vocab  # ids do not depend on reading order
    vocab.save(tmp_path)
    assert Vocabulary.load(tmp_path) == vocab
    hf = Wav2Vec2CTCTokenizer(str(tmp_path / "vocab.json"))  # the plain HF loader, default arguments
    for text in texts:
        ids = vocab.encode(text)
        assert hf(text).input_ids == ids
        assert vocab.decode(ids) == text == hf.decode(ids, group_tokens=False)
    assert vocab.tokenizer().pad_token_id == 0 and len(vocab.tokenizer()) == len(vocab)
    assert vocab.encode("qé!") == [vocab.index["q"], vocab.index["é"], vocab.unk_id]
    with pytest.raises(DataError, match="'!'"):
        vocab.encode("qé!", strict=True)
    q, e = vocab.index["q"], vocab.index["é"]
    assert vocab.decode([0, q, q, 0, e, e, 2, 2, q], ctc=True) == "qé q"


def test_vocab_file_errors(tmp_path):
    with pytest.raises(DataError, match="vocabulary file not found"):
        Vocabulary.load(tmp_path)
    (tmp_path / "vocab.json").write_text('{"<pad>": 0, "<unk>": 1, "|": 3}', encoding="utf-8")
    with pytest.raises(DataError, match="without gaps"):
        Vocabulary.load(tmp_path)


def test_phonemize_gives_ipa_and_rejects_unknown_language():
    from lasp.data.phonemes import phonemize

    ipa = phonemize("hola amigo", "es")
    assert "ˈ" in ipa and "ola" in ipa and len(ipa.split()) == 2
    assert phonemize("привет", "ru") != phonemize("hola", "es")
    with pytest.raises(DataError, match="language 'xx'"):
        phonemize("hello", "xx")


def test_manifest_written_from_a_relative_corpus_dir_resolves(tmp_path, monkeypatch):
    from lasp.data.manifest import Utterance, read_manifest, write_manifest

    monkeypatch.chdir(tmp_path)
    (tmp_path / "corpus" / "audio").mkdir(parents=True)
    (tmp_path / "corpus" / "audio" / "a.flac").write_bytes(b"")
    write_manifest("corpus/train.jsonl", [Utterance(audio="corpus/audio/a.flac", text="hola", lang="es")])
    assert '"audio": "audio/a.flac"' in (tmp_path / "corpus" / "train.jsonl").read_text()
    assert read_manifest("corpus/train.jsonl")[0].audio == str(tmp_path / "corpus" / "audio" / "a.flac")
