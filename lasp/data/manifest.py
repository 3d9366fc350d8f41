"""Manifests: one JSON object per line, ``{"audio", "text", "lang", "duration"}``, one file per split.

``audio`` is stored relative to the manifest's folder so a corpus directory can be moved as a whole; in memory
every :class:`Utterance` carries the absolute path plus the manifest and 1-based line it came from, so any later
problem with it can be reported as ``train.jsonl:412 (clips/x.mp3)``.
"""
from __future__ import annotations

import io
import json
import math
import os
from dataclasses import dataclass, field
from typing import Iterable

from lasp.errors import DataError
from lasp.io import atomic_write, read_text
from lasp.languages import check_language_code

REQUIRED_KEYS = ("audio", "text", "lang")
SPLITS = ("train", "dev", "test")


@dataclass
class Utterance:
    audio: str
    text: str
    lang: str
    duration: float | None = None
    row: int = 0
    source: str = ""
    id: str | None = None
    extra: dict = field(default_factory=dict)

    @property
    def uid(self) -> str:
        """A stable identifier: the manifest's ``id`` if given, else ``<lang>/<audio file stem>``."""
        if self.id:
            return self.id
        stem = os.path.splitext(os.path.basename(self.audio))[0]
        return f"{self.lang}/{stem}"

    @property
    def where(self) -> str:
        """``manifest:row (audio path)`` for error messages."""
        origin = f"{self.source}:{self.row}" if self.source else f"row {self.row}"
        return f"{origin} ({self.audio})"


def read_manifest(path: str | os.PathLike) -> list[Utterance]:
    """Read a JSONL manifest; audio paths are resolved against the manifest's folder.

    Blank lines are ignored. Malformed JSON, a missing key, a wrongly typed value, an ``id`` given twice and two
    spellings of one language code that differ only in case (``ES`` next to ``es``: one language, two mask files
    that collide on a case-insensitive file system) raise DataError naming the file and line.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise DataError(f"{path}: manifest not found")
    base = os.path.dirname(os.path.abspath(path))
    utts: list[Utterance] = []
    # universal newlines, as a file opened in text mode reads them (a JSON string may hold U+2028)
    for row, line in enumerate(io.StringIO(read_text(path), newline=None), start=1):
        if not line.strip():
            continue
        try:
            obj = json.loads(line)
        except json.JSONDecodeError as err:
            raise DataError(f"{path}:{row}: malformed JSON ({err.msg} at column {err.colno})") from None
        utts.append(_parse_row(obj, path, row, base))
    _check_unique(utts, path)
    return utts


def _check_unique(utts: list[Utterance], path: str) -> None:
    ids: dict[str, int] = {}
    langs: dict[str, tuple[str, int]] = {}
    for utt in utts:
        if utt.id is not None:
            if utt.id in ids:
                raise DataError(f"{path}:{utt.row}: id {utt.id!r} was already given at line {ids[utt.id]}; every "
                                "utterance needs its own id (a repeated row would be trained on or scored twice)")
            ids[utt.id] = utt.row
        spelled, row = langs.setdefault(utt.lang.lower(), (utt.lang, utt.row))
        if spelled != utt.lang:
            raise DataError(f"{path}:{utt.row}: language code {utt.lang!r} differs from {spelled!r} (line {row}) "
                            "only in case; spell each language one way")


def _parse_row(obj: object, path: str, row: int, base: str) -> Utterance:
    where = f"{path}:{row}"
    if not isinstance(obj, dict):
        raise DataError(f"{where}: expected a JSON object, got {type(obj).__name__}")
    missing = [k for k in REQUIRED_KEYS if k not in obj]
    if missing:
        raise DataError(f"{where}: missing key(s) {', '.join(missing)}")
    for key in REQUIRED_KEYS:
        if not isinstance(obj[key], str):
            raise DataError(f"{where}: '{key}' must be a string, got {type(obj[key]).__name__}")
    check_language_code(obj["lang"], f"{where}: 'lang'")
    duration = obj.get("duration")
    if duration is not None:
        if (isinstance(duration, bool) or not isinstance(duration, (int, float)) or not math.isfinite(duration)
                or duration < 0):
            raise DataError(f"{where}: 'duration' must be a number of seconds >= 0, got {duration!r}")
        duration = float(duration)
    audio = obj["audio"]
    if not os.path.isabs(audio):
        audio = os.path.normpath(os.path.join(base, audio))
    uid = obj.get("id")
    extra = {k: v for k, v in obj.items() if k not in (*REQUIRED_KEYS, "duration", "id")}
    return Utterance(
        audio=audio, text=obj["text"], lang=obj["lang"], duration=duration, row=row, source=path,
        id=str(uid) if uid is not None else None, extra=extra,
    )


def write_manifest(path: str | os.PathLike, utts: Iterable[Utterance]) -> str:
    """Write utterances as JSONL (atomically), audio relative to the manifest's folder where possible."""
    path = os.fspath(path)
    base = os.path.dirname(os.path.abspath(path))
    os.makedirs(base, exist_ok=True)
    atomic_write(path, manifest_text(utts, base))
    return path


def manifest_text(utts: Iterable[Utterance], base: str) -> str:
    """The JSONL lines of ``utts`` for a manifest in folder ``base``."""
    return "".join(json.dumps(utterance_to_dict(utt, base), ensure_ascii=False) + "\n" for utt in utts)


def utterance_to_dict(utt: Utterance, base: str | None = None) -> dict:
    audio = utt.audio
    if base is not None:
        try:
            # a relative path is relative to the working directory; the manifest stores it relative to itself
            audio = os.path.relpath(os.path.abspath(audio), base)
        except ValueError:  # another drive on Windows: keep it absolute
            pass
    obj: dict = {"audio": audio.replace(os.sep, "/"), "text": utt.text, "lang": utt.lang}
    obj["duration"] = None if utt.duration is None else round(float(utt.duration), 4)
    if utt.id:
        obj["id"] = utt.id
    obj.update(utt.extra)
    return obj


def split_manifests(corpus_dir: str | os.PathLike, splits: Iterable[str] = SPLITS) -> dict[str, str]:
    """The ``<split>.jsonl`` files present in a corpus directory."""
    corpus_dir = os.fspath(corpus_dir)
    found = {s: os.path.join(corpus_dir, f"{s}.jsonl") for s in splits}
    return {s: p for s, p in found.items() if os.path.isfile(p)}
