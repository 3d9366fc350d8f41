"""SpeechDataset: manifest rows -> model-ready items, with every bad row reported by manifest line and path.

Rows are validated up front as far as that is cheap (file exists, duration within limits, transcript non-empty,
spellable with the vocabulary and no longer than its audio can hold, language known). The audio header is opened
only for a row whose manifest gives no duration (or with ``probe_audio=True``): at Common Voice scale every stage
and rank would otherwise open hundreds of thousands of files before the first step. What only decoding reveals (a
corrupt or truncated file, NaN samples, silence) is caught in ``__getitem__``: with ``on_bad="error"`` it raises a
DataError naming the row; with ``on_bad="skip"`` the item comes back as ``{"skipped": BadRow}``, which the
collators drop from the batch and hand on under ``batch["skipped"]`` (so a skip inside a DataLoader worker reaches
the training process, which counts it in the run's summary), and it is logged with its row. Nothing is ever
silently used or silently lost.
"""
from __future__ import annotations

import logging
import os
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from lasp.data.audio import SAMPLE_RATE, AudioError, audio_info, load_audio
from lasp.data.manifest import Utterance, read_manifest
from lasp.data.text import Vocabulary, normalize_text
from lasp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

REASONS = {
    "missing_file": "audio file not found",
    "unreadable_audio": "corrupt or non-audio file",
    "empty_audio": "zero-length audio",
    "silent_audio": "silent audio",
    "nan_samples": "NaN/inf samples",
    "too_long": "longer than max_seconds",
    "too_short": "shorter than min_seconds",
    "empty_text": "empty transcript",
    "unknown_chars": "characters outside the vocabulary",
    "unknown_language": "unknown language code",
    "text_too_long": "transcript longer than its audio can hold",
}
# wav2vec2's encoder emits one frame per 20 ms (a 320-sample stride at 16 kHz), and CTC emits at most one
# character per frame: a transcript with more characters than its audio has frames cannot be learned or scored
CTC_FRAMES_PER_SECOND = 50


@dataclass
class BadRow:
    source: str
    row: int
    audio: str
    lang: str
    reason: str
    message: str
    uid: str = ""

    def __str__(self) -> str:
        origin = f"{self.source}:{self.row}" if self.source else f"row {self.row}"
        return f"{origin} ({self.audio}): {self.message}"


@dataclass
class DataReport:
    """Counts of skipped rows by reason, with every bad row kept for inspection."""

    total: int = 0
    bad: list[BadRow] = field(default_factory=list)

    def add(self, bad: BadRow) -> None:
        self.bad.append(bad)

    @property
    def counts(self) -> Counter:
        return Counter(b.reason for b in self.bad)

    def __len__(self) -> int:
        return len(self.bad)

    def summary(self) -> str:
        if not self.bad:
            return f"all {self.total} rows usable"
        parts = ", ".join(f"{n} {REASONS.get(r, r)}" for r, n in self.counts.most_common())
        return f"skipped {len(self.bad)} of {self.total} rows ({parts}); first: {self.bad[0]}"


class SpeechDataset:
    """Map-style dataset over utterances; see the module docstring for the bad-row policy.

    Items are dicts: ``input_values`` (float32 array at ``sample_rate``), ``lang``, ``text`` (normalized when
    ``normalize``), ``labels`` (character ids, only when a vocabulary is given) and ``id``.
    """

    def __init__(
        self,
        utterances: Sequence[Utterance] | str | os.PathLike,
        *,
        vocab: Vocabulary | None = None,
        on_bad: str = "skip",
        max_seconds: float | None = 30.0,
        min_seconds: float | None = 0.1,
        known_languages: Iterable[str] | None = None,
        normalize: bool = True,
        sample_rate: int = SAMPLE_RATE,
        probe_audio: bool = False,
        check: bool = True,
        cap_text: bool = True,
    ):
        if on_bad not in ("skip", "error"):
            raise ConfigError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
        if isinstance(utterances, (str, os.PathLike)):
            utterances = read_manifest(utterances)
        self.vocab = vocab
        self.on_bad = on_bad
        self.max_seconds = max_seconds
        self.min_seconds = min_seconds
        self.known_languages = set(known_languages) if known_languages is not None else None
        self.normalize = normalize
        self.sample_rate = sample_rate
        self.probe_audio = probe_audio
        self.cap_text = cap_text  # evaluation scores a transcript too long for its audio (badly) rather than skip it
        self.all_utterances = list(utterances)
        self.utterances = list(self.all_utterances)
        self._report = DataReport(total=len(self.all_utterances))
        if check:
            self.check()

    # -- validation ---------------------------------------------------------------------------------------
    def text_of(self, utt: Utterance) -> str:
        return normalize_text(utt.text, utt.lang) if self.normalize else utt.text

    def check(self, *, decode: bool = False) -> DataReport:
        """Validate every row and keep the good ones; ``decode=True`` also decodes each file (slow, thorough)."""
        good = []
        self._report = DataReport(total=len(self.all_utterances))
        for utt in self.all_utterances:
            problem = self._problem(utt, decode=decode)
            if problem is None:
                good.append(utt)
                continue
            reason, message = problem
            bad = BadRow(utt.source, utt.row, utt.audio, utt.lang, reason, message, utt.uid)
            if self.on_bad == "error":
                raise DataError(str(bad))
            self._report.add(bad)
        self.utterances = good
        if self._report.bad:
            log.warning("%s", self._report.summary())
        return self._report

    def _problem(self, utt: Utterance, *, decode: bool) -> tuple[str, str] | None:
        if not utt.lang or (self.known_languages is not None and utt.lang not in self.known_languages):
            known = ", ".join(sorted(self.known_languages or ()))
            return "unknown_language", f"unknown language code {utt.lang!r} (known: {known})"
        text = self.text_of(utt)
        if not text:
            return "empty_text", f"empty transcript (raw: {utt.text!r})"
        if self.vocab is not None:
            unknown = self.vocab.unknown_chars(text)
            if unknown:
                shown = " ".join(f"{c!r}(U+{ord(c):04X})" for c in sorted(unknown))
                return "unknown_chars", f"characters outside the vocabulary: {shown}"
        try:
            if self.probe_audio or utt.duration is None or not os.path.exists(utt.audio):
                info = audio_info(utt.audio)
                if info.frames <= 0:
                    return "empty_audio", "audio is empty (0 samples)"
                utt.duration = round(info.duration, 4)
            if decode:
                self._decode(utt)
        except AudioError as err:
            return err.reason, err.detail
        if self.max_seconds is not None and utt.duration > self.max_seconds:
            return "too_long", f"{utt.duration:.2f} s is longer than max_seconds={self.max_seconds:g}"
        if self.min_seconds is not None and utt.duration < self.min_seconds:
            return "too_short", f"{utt.duration:.3f} s is shorter than min_seconds={self.min_seconds:g}"
        if self.cap_text and len(text) > utt.duration * CTC_FRAMES_PER_SECOND:
            return "text_too_long", (f"a transcript of {len(text)} characters for {utt.duration:.2f} s of audio (at "
                                     f"most {int(utt.duration * CTC_FRAMES_PER_SECOND)}: one per 20 ms frame)")
        return None

    def _decode(self, utt: Utterance) -> np.ndarray:
        audio = load_audio(utt.audio, self.sample_rate)
        seconds = audio.size / self.sample_rate
        if self.max_seconds is not None and seconds > self.max_seconds:
            raise AudioError(utt.audio, "too_long", f"{seconds:.2f} s is longer than max_seconds={self.max_seconds:g}")
        return audio

    # -- access -------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.utterances)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.read(index)
        except AudioError as err:
            utt = self.utterances[index]
            bad = BadRow(utt.source, utt.row, utt.audio, utt.lang, err.reason, err.detail, utt.uid)
            if self.on_bad == "error":
                raise DataError(str(bad)) from None
            self._report.add(bad)  # this process's copy; in a DataLoader worker the batch carries it instead
            log.warning("skipping %s", bad)
            return {"skipped": bad}

    def read(self, index: int) -> dict:
        """Item ``index``; raises :class:`AudioError` when its audio cannot be decoded."""
        utt = self.utterances[index]
        audio = self._decode(utt)
        text = self.text_of(utt)
        item = {"input_values": audio, "lang": utt.lang, "text": text, "id": utt.uid}
        if self.vocab is not None:
            item["labels"] = self.vocab.encode(text)
        return item

    def report(self) -> DataReport:
        return self._report

    def summary(self) -> str:
        return self._report.summary()

    @property
    def langs(self) -> list[str]:
        """Language of each item, in item order (what the sampler groups by)."""
        return [u.lang for u in self.utterances]

    @property
    def languages(self) -> list[str]:
        return sorted(set(self.langs))

    @property
    def durations(self) -> list[float]:
        """Seconds per item (header or manifest duration), for length bucketing and language weights."""
        return [float(u.duration) if u.duration is not None else 0.0 for u in self.utterances]

    def hours_by_language(self) -> dict[str, tuple[int, float]]:
        """{lang: (utterances, hours)} over the usable items."""
        out: dict[str, list] = {}
        for utt, dur in zip(self.utterances, self.durations):
            entry = out.setdefault(utt.lang, [0, 0.0])
            entry[0] += 1
            entry[1] += dur / 3600
        return {lang: (n, h) for lang, (n, h) in sorted(out.items())}


def unreadable_entry(uid: str, audio: str, reason: str, message: str) -> dict:
    """How evaluation reports a row it could not score (results.json ``unreadable``)."""
    return {"id": str(uid), "audio": str(audio), "reason": f"{REASONS.get(reason, reason)}: {message}"}


class Readable:
    """Every row of a dataset, readable or not (evaluation must account for each one).

    ``__getitem__`` gives the dataset's item, or ``{"unreadable": {...}, "lang": ...}`` naming the row and why its
    audio could not be decoded; this travels through DataLoader workers, where a dataset's own report would not.
    """

    def __init__(self, dataset: SpeechDataset):
        self.dataset = dataset

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, index: int) -> dict:
        try:
            return self.dataset.read(index)
        except AudioError as err:
            utt = self.dataset.utterances[index]
            if self.dataset.on_bad == "error":
                raise DataError(str(BadRow(utt.source, utt.row, utt.audio, utt.lang, err.reason, err.detail,
                                           utt.uid))) from None
            return {"unreadable": unreadable_entry(utt.uid, utt.audio, err.reason, err.detail), "lang": utt.lang}
