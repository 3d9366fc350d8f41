"""An offline multilingual demo corpus: frequent-word sentences spoken by espeak-ng.

Nothing is downloaded: word lists come from ``wordfreq`` and speech from the espeak-ng library in the
``espeakng-loader`` wheel. Each utterance gets its own voice variant ("es+m3", "es+f2", ...), speaking rate, pitch,
gain and a little white noise, so a model has to generalize over speakers rather than memorize one waveform per
word. The corpus is synthetic and tiny, but it has what the method needs: several languages with their own
phonotactics and spelling, and optionally a few low-resource ones.

Every utterance is a pure function of (seed, language, split, index), so a corpus is reproducible bit for bit
whatever the number of workers, and asking for more minutes only appends utterances.
"""
from __future__ import annotations

import json
import math
import os
import shutil
import zlib
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf

from lasp.data.audio import SAMPLE_RATE
from lasp.data.manifest import Utterance, split_manifests, write_manifest
from lasp.errors import ConfigError, DataError

FORMAT_VERSION = 1
SETTINGS_FILE = "synth.json"
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f2", "f3", "f4")
VOCAB_SIZE = 1500  # most frequent alphabetic words per language
_CHUNK = 16  # utterances per worker task: amortizes the process round trip


def check_languages(langs: Sequence[str]) -> None:
    """DataError naming each language that wordfreq or espeak-ng lacks."""
    import wordfreq

    from lasp.data.espeak import voice_for

    available = wordfreq.available_languages()
    for lang in langs:
        if lang not in available:
            raise DataError(f"language '{lang}': wordfreq has no word list for it "
                            f"(available: {', '.join(sorted(available))})")
        voice_for(lang)


def word_list(lang: str, size: int = VOCAB_SIZE) -> tuple[list[str], np.ndarray]:
    """The ``size`` most frequent alphabetic words and sampling weights (Zipf, flattened by a square root)."""
    import wordfreq

    from lasp.data.text import normalize_text

    # Single letters are only kept among the very top words (Spanish "y", Polish "w"); lower down they are
    # mostly abbreviations that espeak-ng spells out, which would not match the transcript.
    ranked = wordfreq.top_n_list(lang, 3 * size)
    words = [w for rank, w in enumerate(ranked)
             if w.isalpha() and normalize_text(w, lang) == w and (len(w) > 1 or rank < 30)]
    words = words[:size]
    weights = 1.0 / np.sqrt(np.arange(1, len(words) + 1))
    return words, weights / weights.sum()


def _utterance_spec(lang: str, split: str, index: int, seed: int, words, weights, n_words) -> dict:
    # A stable per-utterance generator: crc32 instead of hash() so it does not change between processes.
    key = [seed, zlib.crc32(lang.encode()), zlib.crc32(split.encode()), index]
    rng = np.random.default_rng(key)
    count = int(rng.integers(n_words[0], n_words[1] + 1))
    text = " ".join(words[i] for i in rng.choice(len(words), size=count, p=weights))
    variant = VARIANTS[int(rng.integers(len(VARIANTS)))]
    return {
        "lang": lang, "split": split, "index": index, "text": text, "variant": variant,
        "rate": int(rng.integers(130, 201)), "pitch": int(rng.integers(30, 71)),
        "range": int(rng.integers(30, 81)), "gain": float(rng.uniform(0.3, 0.9)),
        "snr_db": float(rng.uniform(25.0, 40.0)), "noise_seed": key,
    }


def _render(spec: dict, out_dir: str) -> tuple[str, float]:
    """Synthesize one utterance to FLAC; returns (path, seconds)."""
    import soxr

    from lasp.data.espeak import VOICE_NAMES, engine

    eng = engine()
    voice = VOICE_NAMES.get(spec["lang"], spec["lang"]) + (f"+{spec['variant']}" if spec["variant"] else "")
    pcm = eng.synth(spec["text"], voice, rate=spec["rate"], pitch=spec["pitch"], pitch_range=spec["range"])
    if pcm.size == 0:
        raise DataError(f"espeak-ng produced no audio for {spec['lang']} {spec['text']!r}")
    audio = soxr.resample(pcm.astype(np.float32) / 32768.0, eng.sample_rate, SAMPLE_RATE)
    audio *= spec["gain"] / max(float(np.abs(audio).max()), 1e-6)
    rms = float(np.sqrt(np.mean(audio**2)))
    noise = np.random.default_rng(spec["noise_seed"]).standard_normal(audio.size).astype(np.float32)
    audio += noise * (rms * 10 ** (-spec["snr_db"] / 20))
    path = os.path.join(out_dir, "audio", spec["lang"], f"{spec['split']}_{spec['index']:06d}.flac")
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return path, audio.size / SAMPLE_RATE


def _render_chunk(specs: list[dict], out_dir: str) -> list[tuple[str, float]]:
    return [_render(s, out_dir) for s in specs]


class _Renderer:
    """Runs spec chunks in a spawned process pool (espeak-ng state is per process) or in-process."""

    def __init__(self, out_dir: str, workers: int):
        self.out_dir = out_dir
        self.pool = (ProcessPoolExecutor(workers, mp_context=get_context("spawn")) if workers > 1 else None)

    def __call__(self, specs: list[dict]) -> list[tuple[str, float]]:
        chunks = [specs[i:i + _CHUNK] for i in range(0, len(specs), _CHUNK)]
        if self.pool is None:
            results = [_render_chunk(c, self.out_dir) for c in chunks]
        else:
            results = list(self.pool.map(_render_chunk, chunks, [self.out_dir] * len(chunks)))
        return [r for chunk in results for r in chunk]

    def close(self) -> None:
        if self.pool is not None:
            self.pool.shutdown()


def synthesize_corpus(
    langs: Sequence[str],
    out_dir: str | os.PathLike,
    *,
    minutes_per_lang: float | None = None,
    utterances_per_lang: int | None = None,
    test_utterances: int = 40,
    dev_utterances: int = 20,
    words: tuple[int, int] = (3, 7),
    low_resource: Iterable[str] = (),
    low_factor: float = 5,
    seed: int = 0,
    workers: int = 2,
) -> dict[str, str]:
    """Write ``audio/<lang>/*.flac`` and ``{train,dev,test}.jsonl`` under ``out_dir``; returns split -> manifest.

    The train split holds ``minutes_per_lang`` minutes (cut at the first utterance that reaches it) or
    ``utterances_per_lang`` utterances per language (default 300), divided by ``low_factor`` for the languages in
    ``low_resource``; dev and test hold fixed counts for every language. Idempotent: if ``out_dir`` already holds a
    corpus made with the same settings, its manifests are returned without synthesizing anything.
    """
    langs = list(dict.fromkeys(langs))
    low_resource = sorted(set(low_resource))
    if not langs:
        raise ConfigError("synthesize_corpus: no languages given")
    if minutes_per_lang is not None and utterances_per_lang is not None:
        raise ConfigError("synthesize_corpus: give minutes_per_lang or utterances_per_lang, not both")
    if minutes_per_lang is None and utterances_per_lang is None:
        utterances_per_lang = 300
    if (minutes_per_lang is not None and minutes_per_lang <= 0) or (utterances_per_lang is not None
                                                                     and utterances_per_lang <= 0):
        raise ConfigError("synthesize_corpus: the train amount per language must be positive")
    if not (1 <= words[0] <= words[1]):
        raise ConfigError(f"synthesize_corpus: words must be (min, max) with 1 <= min <= max, got {words}")
    if low_factor < 1:
        raise ConfigError(f"synthesize_corpus: low_factor must be >= 1, got {low_factor}")
    unknown_low = [lang for lang in low_resource if lang not in langs]
    if unknown_low:
        raise ConfigError(f"synthesize_corpus: low-resource language(s) {', '.join(unknown_low)} not in --langs")

    out_dir = os.fspath(out_dir)
    settings = {
        "format": FORMAT_VERSION, "langs": langs, "minutes_per_lang": minutes_per_lang,
        "utterances_per_lang": utterances_per_lang, "test_utterances": test_utterances,
        "dev_utterances": dev_utterances, "words": list(words), "low_resource": low_resource,
        "low_factor": low_factor, "seed": seed,
    }
    settings_path = os.path.join(out_dir, SETTINGS_FILE)
    existing = split_manifests(out_dir)
    if len(existing) == 3 and os.path.isfile(settings_path):
        with open(settings_path, encoding="utf-8") as fh:
            if json.load(fh) == settings:
                return existing
    check_languages(langs)
    if os.path.isfile(settings_path):  # an older corpus of ours with other settings: start clean
        shutil.rmtree(os.path.join(out_dir, "audio"), ignore_errors=True)
        os.remove(settings_path)
    os.makedirs(out_dir, exist_ok=True)

    renderer = _Renderer(out_dir, max(1, int(workers)))
    try:
        splits: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": []}
        for lang in langs:
            vocab, weights = word_list(lang)
            factor = low_factor if lang in low_resource else 1

            def specs(split: str, start: int, stop: int) -> list[dict]:
                return [_utterance_spec(lang, split, i, seed, vocab, weights, words) for i in range(start, stop)]

            def to_utts(spec_list, rendered) -> list[Utterance]:
                return [Utterance(audio=p, text=s["text"], lang=lang, duration=round(d, 4),
                                  id=f"{lang}/{s['split']}_{s['index']:06d}")
                        for s, (p, d) in zip(spec_list, rendered)]

            if minutes_per_lang is not None:
                splits["train"] += _render_minutes(renderer, specs, to_utts, minutes_per_lang * 60 / factor, out_dir)
            else:
                n = max(1, int(round(utterances_per_lang / factor)))
                splits["train"] += to_utts(s := specs("train", 0, n), renderer(s))
            for split, n in (("dev", dev_utterances), ("test", test_utterances)):
                splits[split] += to_utts(s := specs(split, 0, n), renderer(s))
    finally:
        renderer.close()

    paths = {split: write_manifest(os.path.join(out_dir, f"{split}.jsonl"), utts) for split, utts in splits.items()}
    with open(settings_path, "w", encoding="utf-8") as fh:
        json.dump(settings, fh, indent=1)
    return paths


def _render_minutes(renderer, specs, to_utts, target_s: float, out_dir: str) -> list[Utterance]:
    """Render train utterances in rounds until their total duration reaches ``target_s``."""
    utts: list[Utterance] = []
    total, start = 0.0, 0
    while total < target_s:
        # Typical utterances last ~2 s; over-asking a little avoids a second round most of the time.
        n = max(_CHUNK, int(math.ceil((target_s - total) / 2.0 * 1.15)))
        spec_list = specs("train", start, start + n)
        new = to_utts(spec_list, renderer(spec_list))
        start += n
        for utt in new:
            if total >= target_s:
                os.remove(utt.audio)  # rendered in the last round but past the target
                continue
            utts.append(utt)
            total += float(utt.duration)
    return utts
