"""A Common Voice release in miniature (``ROOT/<lang>/{train,dev,test}.tsv`` + ``clips/*.mp3``) made of test
tones, for acceptance checks on machines that cannot synthesize speech (no espeak-ng voices or word lists:
``lasp.data.synth`` is not used) and for the test suite.

``lasp data import-commonvoice`` turns it into manifests like any real release.
"""
from __future__ import annotations

import os

import numpy as np
import soundfile as sf

# a few common words per language, so that transcripts share characters between splits
WORDS = {
    "es": ["hola", "casa", "agua", "perro", "sol", "luna", "mesa", "libro"],
    "ru": ["дом", "мир", "вода", "кот", "лес", "небо", "снег", "река"],
    "de": ["haus", "wasser", "hund", "sonne", "mond", "tisch", "buch", "baum"],
    "it": ["casa", "acqua", "cane", "sole", "luna", "tavolo", "libro", "albero"],
}


def sentences(lang: str, n: int) -> list[str]:
    """``n`` three-word transcripts from :data:`WORDS` (deterministic)."""
    words = WORDS[lang]
    k = len(words)
    return [" ".join((words[i % k], words[(i // k + i) % k], words[(3 * i + 1) % k])) for i in range(n)]


CV_HEADER = ["client_id", "path", "sentence_id", "sentence", "sentence_domain", "up_votes", "down_votes", "age",
             "gender", "accents", "variant", "locale", "segment"]


def tone(seconds: float = 1.0, sr: int = 16000, seed: int = 0, freq: float = 220.0) -> np.ndarray:
    """A speech-ish test signal: an amplitude-modulated harmonic tone plus a little noise (float32)."""
    t = np.arange(int(seconds * sr)) / sr
    rng = np.random.default_rng(seed)
    x = 0.3 * np.sin(2 * np.pi * freq * t) * (0.6 + 0.4 * np.sin(2 * np.pi * 3 * t))
    x += 0.1 * np.sin(2 * np.pi * 3 * freq * t) + 0.005 * rng.standard_normal(t.size)
    return x.astype(np.float32)


def write_audio(path: str, signal: np.ndarray, sr: int = 16000, fmt: str | None = None) -> str:
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fmt = fmt or os.path.splitext(path)[1][1:].upper()
    sf.write(path, signal, sr, format=fmt)
    return path


def make_commonvoice(root: str, langs: dict[str, list[str]], *, sr: int = 48000, missing: tuple[str, ...] = ()) -> str:
    """ROOT/<lang>/{train,dev,test}.tsv with Common Voice's header and mp3 clips; clips named in ``missing``
    are listed in the TSV but not written. Rows are split 60/20/20 in order."""
    for li, (lang, sentences) in enumerate(langs.items()):
        lang_dir = os.path.join(root, lang)
        os.makedirs(os.path.join(lang_dir, "clips"), exist_ok=True)
        rows = []
        for i, sentence in enumerate(sentences):
            clip = f"common_voice_{lang}_{1000 + i}.mp3"
            if clip not in missing:
                write_audio(os.path.join(lang_dir, "clips", clip), tone(0.6 + 0.1 * i, sr, seed=i, freq=150 + 40 * li),
                            sr, "MP3")
            rows.append([f"c{i:04x}", clip, f"s{i}", sentence, "", "2", "0", "", "", "", "", lang, ""])
        cut1, cut2 = int(len(rows) * 0.6), int(len(rows) * 0.8)
        for split, part in (("train", rows[:cut1]), ("dev", rows[cut1:cut2]), ("test", rows[cut2:])):
            with open(os.path.join(lang_dir, f"{split}.tsv"), "w", encoding="utf-8") as fh:
                fh.write("\t".join(CV_HEADER) + "\n")
                for row in part:
                    fh.write("\t".join(row) + "\n")
    return root


