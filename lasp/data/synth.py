"""An offline multilingual demo corpus: frequent-word sentences spoken by espeak-ng.

Nothing is downloaded: word lists come from ``wordfreq`` and speech from the espeak-ng library in the
``espeakng-loader`` wheel. Each utterance gets its own voice variant ("es+m3", "es+f2", ...), speaking rate, pitch,
gain and a little white noise, so a model has to generalize over speakers rather than memorize one waveform per
word. The corpus is synthetic and tiny, but it has what the method needs: several languages with their own
phonotactics and spelling, and optionally a few low-resource ones.

Every utterance is a pure function of (seed, language, split, index), so a corpus is reproducible bit for bit
whatever the number of workers (see :class:`_Renderer` for what that takes with espeak-ng).
"""
from __future__ import annotations

import math
import os
import re
import zlib
from multiprocessing import get_context
from typing import Iterable, Sequence

import numpy as np
import soundfile as sf

from lasp.data import espeak
from lasp.data.audio import SAMPLE_RATE
from lasp.data.espeak import VOICE_NAMES, engine, voice_for
from lasp.data.manifest import Utterance, split_manifests, write_manifest
from lasp.data.text import normalize_text
from lasp.errors import ConfigError, DataError
from lasp.io import atomic_write_json, read_json_object
from lasp.locks import locked

FORMAT_VERSION = 1
SETTINGS_FILE = "synth.json"
VARIANTS = ("", "m1", "m2", "m3", "m4", "m5", "m7", "f1", "f4")  # f2, f3 are not reproducible
VOCAB_SIZE = 1500  # most frequent alphabetic words per language
_CHUNK = 16  # utterances per worker process (see _Renderer)


def check_languages(langs: Sequence[str]) -> None:
    """DataError naming each language that wordfreq or espeak-ng lacks."""
    import wordfreq

    available = wordfreq.available_languages()
    for lang in langs:
        if lang not in available:
            raise DataError(f"language '{lang}': wordfreq has no word list for it "
                            f"(available: {', '.join(sorted(available))})")
        voice_for(lang)


def _wordfreq_languages() -> set[str]:
    import wordfreq

    return set(wordfreq.available_languages())


def word_list(lang: str, size: int = VOCAB_SIZE) -> tuple[list[str], np.ndarray]:
    """The ``size`` most frequent alphabetic words and sampling weights (Zipf, flattened by a square root)."""
    import wordfreq

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
    path = _spec_path(spec, out_dir)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    sf.write(path, np.clip(audio, -1.0, 1.0), SAMPLE_RATE, format="FLAC", subtype="PCM_16")
    return path, audio.size / SAMPLE_RATE


def _spec_path(spec: dict, out_dir: str) -> str:
    return os.path.join(out_dir, "audio", spec["lang"], f"{spec['split']}_{spec['index']:06d}.flac")


def _render_chunk(specs: list[dict], out_dir: str) -> list[tuple[str, float]]:
    return [_render(s, out_dir) for s in specs]


class _Renderer:
    """Renders chunks of utterance specs, each chunk in a fresh process.

    espeak-ng carries state from one utterance to the next (pitch flutter phase and the like), so the same text
    and settings give slightly different samples depending on what the process spoke before. A fresh process per
    chunk, with chunk boundaries fixed at multiples of ``_CHUNK`` per (language, split), makes every file depend
    only on the seed. Processes are forked from this one (cheap: nothing to import) unless this process has
    already driven espeak-ng itself, in which case they come from a clean fork server.
    """

    def __init__(self, out_dir: str, workers: int):
        import multiprocessing

        self.out_dir = out_dir
        methods = multiprocessing.get_all_start_methods()
        if espeak._ENGINE is None and "fork" in methods:
            ctx = get_context("fork")
        elif "forkserver" in methods:
            ctx = get_context("forkserver")
            ctx.set_forkserver_preload([__name__])
        else:
            ctx = get_context("spawn")
        self.pool = ctx.Pool(max(1, workers), maxtasksperchild=1)

    def check(self, langs: Sequence[str]) -> None:
        """check_languages in a worker, so this process never initializes espeak-ng."""
        self.pool.apply(check_languages, (list(langs),))

    def __call__(self, specs: list[dict]) -> list[tuple[str, float]]:
        chunks: list[list[dict]] = []
        for spec in specs:  # split wherever the index crosses a multiple of _CHUNK
            if not chunks or spec["index"] % _CHUNK == 0 or (spec["lang"], spec["split"]) != (
                    chunks[-1][-1]["lang"], chunks[-1][-1]["split"]):
                chunks.append([])
            chunks[-1].append(spec)
        results = self.pool.starmap(_render_chunk, [(c, self.out_dir) for c in chunks], chunksize=1)
        return [r for chunk in results for r in chunk]

    def close(self) -> None:
        self.pool.close()
        self.pool.join()


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
    replace: bool = False,
) -> dict[str, str]:
    """Write ``audio/<lang>/*.flac`` and ``{train,dev,test}.jsonl`` under ``out_dir``; returns split -> manifest.

    The train split holds ``minutes_per_lang`` minutes (cut at the first utterance that reaches it) or
    ``utterances_per_lang`` utterances per language (default 300), divided by ``low_factor`` for the languages in
    ``low_resource``; dev and test hold fixed counts for every language. Idempotent: if ``out_dir`` already holds a
    corpus made with the same settings, its manifests are returned without synthesizing anything, and a
    synthesis that was stopped part-way is completed. A corpus made with other settings is data someone may be
    reading: it is refused unless ``replace`` (then the files its ``synth.json`` lists go, nothing else).
    One process at a time synthesizes into a folder (a lock in it).
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
    settings = synth_settings(langs, minutes_per_lang=minutes_per_lang, utterances_per_lang=utterances_per_lang,
                              test_utterances=test_utterances, dev_utterances=dev_utterances, words=words,
                              low_resource=low_resource, low_factor=low_factor, seed=seed)
    with locked(out_dir, "corpus"):
        return _synthesize(out_dir, settings, replace, workers)


def synth_settings(langs: Sequence[str], *, minutes_per_lang: float | None = None,
                   utterances_per_lang: int | None = None, test_utterances: int = 40, dev_utterances: int = 20,
                   words: tuple[int, int] = (3, 7), low_resource: Iterable[str] = (), low_factor: float = 5,
                   seed: int = 0) -> dict:
    """The settings a corpus is made with, as ``synth.json`` records them (what decides whether one matches)."""
    if minutes_per_lang is None and utterances_per_lang is None:
        utterances_per_lang = 300
    return {
        "format": FORMAT_VERSION, "langs": list(dict.fromkeys(langs)), "minutes_per_lang": minutes_per_lang,
        "utterances_per_lang": utterances_per_lang, "test_utterances": test_utterances,
        "dev_utterances": dev_utterances, "words": list(words), "low_resource": sorted(set(low_resource)),
        "low_factor": low_factor, "seed": seed,
    }


def _synthesize(out_dir: str, settings: dict, replace: bool, workers: int) -> dict[str, str]:
    langs, seed, words = settings["langs"], settings["seed"], tuple(settings["words"])
    minutes_per_lang, utterances_per_lang = settings["minutes_per_lang"], settings["utterances_per_lang"]
    dev_utterances, test_utterances = settings["dev_utterances"], settings["test_utterances"]
    low_resource, low_factor = settings["low_resource"], settings["low_factor"]
    existing = split_manifests(out_dir)
    record = read_synth_record(out_dir)
    if record is not None and record["complete"] and record["settings"] == settings and len(existing) == 3:
        return existing
    if record is None and existing:
        raise DataError(f"{out_dir} holds manifests ({', '.join(existing)}) that lasp data synth did not make "
                        f"(no {SETTINGS_FILE}); choose another --out")
    if record is not None and record["settings"] != settings and not replace:
        state = "a corpus" if record["complete"] else "an unfinished corpus"
        raise DataError(f"{out_dir} holds {state} lasp data synth made with other settings "
                        f"({describe_settings(record['settings'], settings)}), which other runs may be reading; "
                        "choose another --out, or replace it with --force")
    # an older corpus of ours with other settings: remove the files it made (recorded), nothing else
    for rel in [*(record or {}).get("files", []), *(f"{s}.jsonl" for s in existing if record is not None)]:
        path = os.path.join(out_dir, rel)
        if os.path.isfile(path):
            os.remove(path)
    made: list[str] = []

    def claim(specs_: list[dict]) -> None:
        """Record the files a round will write before writing them (a kill mid-round leaves them ours), and
        refuse to write over a file someone else put there."""
        paths = [_spec_path(sp, out_dir) for sp in specs_]
        for path in paths:
            if os.path.exists(path):
                raise DataError(f"{path} exists and was not made by lasp data synth; move it away or choose "
                                "another --out")
        made.extend(os.path.relpath(p, out_dir) for p in paths)
        _write_record(out_dir, settings, made, complete=False)

    missing = [lang for lang in langs if lang not in _wordfreq_languages()]
    if missing:
        check_languages(missing)  # raises, naming the language; no espeak-ng needed for that
    lists = {lang: word_list(lang) for lang in langs}

    def specs(lang: str, split: str, start: int, stop: int) -> list[dict]:
        vocab, weights = lists[lang]
        return [_utterance_spec(lang, split, i, seed, vocab, weights, words) for i in range(start, stop)]

    # Dev, test and the first round of train for every language go to the pool together, so all workers stay
    # busy; minutes-based train splits then get further rounds until each language reaches its target.
    target = {lang: (minutes_per_lang * 60 / (low_factor if lang in low_resource else 1)
                     if minutes_per_lang is not None else None) for lang in langs}
    todo: list[dict] = []
    next_train = {}
    for lang in langs:
        factor = low_factor if lang in low_resource else 1
        if minutes_per_lang is not None:
            n = _round_size(target[lang])
        else:
            n = max(1, int(round(utterances_per_lang / factor)))
        todo += specs(lang, "train", 0, n) + specs(lang, "dev", 0, dev_utterances) + specs(lang, "test", 0, test_utterances)
        next_train[lang] = n

    rendered: dict[tuple[str, str], list[Utterance]] = {}
    renderer = _Renderer(out_dir, max(1, int(workers)))
    try:
        renderer.check(langs)
        while todo:
            claim(todo)
            for spec, (path, dur) in zip(todo, renderer(todo)):
                rendered.setdefault((spec["lang"], spec["split"]), []).append(Utterance(
                    audio=path, text=spec["text"], lang=spec["lang"], duration=round(dur, 4),
                    id=f"{spec['lang']}/{spec['split']}_{spec['index']:06d}"))
            todo = []
            for lang in langs:
                if target[lang] is None:
                    continue
                have = sum(u.duration for u in rendered.get((lang, "train"), []))
                if have < target[lang]:
                    n = _round_size(target[lang] - have)
                    todo += specs(lang, "train", next_train[lang], next_train[lang] + n)
                    next_train[lang] += n
    finally:
        renderer.close()

    splits: dict[str, list[Utterance]] = {"train": [], "dev": [], "test": []}
    for lang in langs:
        train = rendered.get((lang, "train"), [])
        if target[lang] is not None:
            train = _cut_at(train, target[lang])
        splits["train"] += train
        splits["dev"] += rendered.get((lang, "dev"), [])
        splits["test"] += rendered.get((lang, "test"), [])

    paths = {split: write_manifest(os.path.join(out_dir, f"{split}.jsonl"), utts) for split, utts in splits.items()}
    kept = [os.path.relpath(u.audio, out_dir) for utts in splits.values() for u in utts]
    _write_record(out_dir, settings, kept, complete=True)
    return paths


def describe_settings(recorded: dict, wanted: dict) -> str:
    """``utterances_per_lang 24, asked 25; ...``: how the settings of two corpora differ."""
    keys = [k for k in wanted if recorded.get(k) != wanted.get(k)]
    return "; ".join(f"{k} {recorded.get(k)!r}, asked {wanted.get(k)!r}" for k in keys) or "none"


def read_synth_record(out_dir: str | os.PathLike) -> dict | None:
    """``synth.json``: the settings and the files a synthesis made (None when there is none)."""
    out_dir = os.fspath(out_dir)
    path = os.path.join(out_dir, SETTINGS_FILE)
    if not os.path.isfile(path):
        return None
    data = read_json_object(path, "synthetic corpus record", DataError, hint="it lists the files lasp made there")
    if "settings" in data:
        return {"settings": data["settings"], "files": list(data.get("files", [])),
                "complete": bool(data.get("complete"))}
    # written before the file list was recorded: our files are the ones our naming scheme gives
    files = []
    for lang in data.get("langs", []):
        folder = os.path.join(out_dir, "audio", lang)
        if os.path.isdir(folder):
            files += [os.path.join("audio", lang, f) for f in os.listdir(folder)
                      if re.fullmatch(r"(train|dev|test)_\d{6}\.flac", f)]
    return {"settings": data, "files": files, "complete": True}


def _write_record(out_dir: str, settings: dict, files: list[str], complete: bool) -> None:
    atomic_write_json(os.path.join(out_dir, SETTINGS_FILE),
                      {"settings": settings, "complete": complete, "files": sorted(set(files))}, indent=1)


def _round_size(seconds: float) -> int:
    """Utterances to render for ``seconds`` more audio: typical ones last ~2 s, ask 15% more, whole chunks."""
    return max(1, int(math.ceil(seconds / 2.0 * 1.15 / _CHUNK))) * _CHUNK


def _cut_at(utts: list[Utterance], target_s: float) -> list[Utterance]:
    """The shortest prefix reaching ``target_s`` seconds; files rendered past it are deleted."""
    kept, total = [], 0.0
    for utt in utts:
        if total >= target_s:
            os.remove(utt.audio)
            continue
        kept.append(utt)
        total += float(utt.duration)
    return kept
