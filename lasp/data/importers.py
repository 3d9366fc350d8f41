"""Importers for generic tables (TSV / CSV / JSONL with a column mapping) and `datasets` saved to disk.

Every importer ends in the same place: ``<out_dir>/<split>.jsonl`` manifests whose audio paths point at the
original files (or at files written under ``<out_dir>/audio`` when the source held raw bytes). Durations are read
from the file headers, so a missing or undecodable file is found at import time and reported with its source row
(skipped and counted with ``on_bad="skip"``, raised with ``on_bad="error"``).
"""
from __future__ import annotations

import csv
import json
import logging
import os
from typing import Iterable, Mapping

from lasp.data.audio import AudioError, audio_info
from lasp.data.dataset import BadRow, DataReport
from lasp.data.manifest import Utterance, manifest_text, read_manifest, write_manifest
from lasp.errors import ConfigError, DataError
from lasp.languages import LANG_PATTERN
from lasp.io import atomic_write

log = logging.getLogger(__name__)

DEFAULT_COLUMNS = {"audio": "audio", "text": "text", "lang": "lang", "duration": "duration"}
# Split names other tools use, mapped to ours.
SPLIT_ALIASES = {"validation": "dev", "valid": "dev", "val": "dev", "eval": "test"}


def finalize_rows(utts: Iterable[Utterance], *, on_bad: str = "skip", probe: bool = True,
                  report: DataReport | None = None) -> list[Utterance]:
    """Check each row's audio header (and read its duration); drop or raise on the bad ones."""
    if on_bad not in ("skip", "error"):
        raise ConfigError(f"on_bad must be 'skip' or 'error', got {on_bad!r}")
    report = report if report is not None else DataReport()
    good = []
    for utt in utts:
        report.total += 1
        try:
            if not LANG_PATTERN.match(utt.lang):  # it will name mask files and folders
                raise AudioError(utt.audio, "bad_language", f"language code {utt.lang!r} is not valid (letters, "
                                 "digits, '-', '_')")
            if not os.path.isfile(utt.audio):
                raise AudioError(utt.audio, "missing_file", "audio file not found")
            if probe or utt.duration is None:
                info = audio_info(utt.audio)
                if info.frames <= 0:
                    raise AudioError(utt.audio, "empty_audio", "audio is empty (0 samples)")
                utt.duration = round(info.duration, 4)
        except AudioError as err:
            bad = BadRow(utt.source, utt.row, utt.audio, utt.lang, err.reason, err.detail)
            if on_bad == "error":
                raise DataError(str(bad)) from None
            report.add(bad)
            continue
        good.append(utt)
    return good


EXISTING = ("refuse", "append", "replace")


def check_existing(out_dir: str, splits: Iterable[str], existing: str) -> None:
    """Before any work: a manifest already in ``out_dir`` is the user's; touch it only when told how."""
    if existing not in EXISTING:
        raise ConfigError(f"existing must be one of {', '.join(EXISTING)}, got {existing!r}")
    if existing != "refuse":
        return
    for split in splits:
        path = os.path.join(out_dir, f"{SPLIT_ALIASES.get(split, split)}.jsonl")
        if os.path.exists(path):
            raise DataError(f"{path} already exists; add --append to add languages to it, or --force to "
                            "replace it (or choose another --out)")


def _append_manifest(path: str, utts: list[Utterance]) -> str:
    """Add rows to an existing manifest: its bytes stay as they are, the new rows follow (atomic replace)."""
    have = sorted({u.lang for u in read_manifest(path)})
    again = sorted({u.lang for u in utts} & set(have))
    if again:
        raise DataError(f"{path} already has language(s) {', '.join(again)}; appending them again would "
                        "duplicate rows (use --force to replace the manifest)")
    with open(path, "rb") as fh:
        old = fh.read()
    new = manifest_text(utts, os.path.dirname(os.path.abspath(path))).encode("utf-8")
    atomic_write(path, old + (b"" if not old or old.endswith(b"\n") else b"\n") + new)
    return path


def _write_splits(splits: Mapping[str, list[Utterance]], out_dir: str, report: DataReport,
                  existing: str = "refuse") -> dict[str, str]:
    check_existing(out_dir, splits, existing)
    paths = {}
    for s, utts in splits.items():
        path = os.path.join(out_dir, f"{s}.jsonl")
        if existing == "append" and os.path.isfile(path):
            paths[s] = _append_manifest(path, utts)
        else:
            paths[s] = write_manifest(path, utts)
    if report.bad:
        log.warning("%s", report.summary())
    return paths


def _columns(columns: Mapping[str, str] | None) -> dict[str, str]:
    merged = dict(DEFAULT_COLUMNS)
    unknown = set(columns or {}) - set(DEFAULT_COLUMNS)
    if unknown:
        raise ConfigError(f"column mapping: unknown field(s) {', '.join(sorted(unknown))}; "
                          f"map our fields {', '.join(DEFAULT_COLUMNS)} to your column names")
    merged.update(columns or {})
    return merged


def read_table(path: str, delimiter: str | None = None) -> tuple[list[str], list[tuple[int, dict]]]:
    """Rows of a TSV/CSV (header line first) or JSONL file as (line number, dict)."""
    ext = os.path.splitext(path)[1].lower()
    if not os.path.isfile(path):
        raise DataError(f"{path}: table not found")
    if ext in (".jsonl", ".json") and delimiter is None:
        rows, header = [], []
        with open(path, encoding="utf-8") as fh:
            for line_no, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                try:
                    obj = json.loads(line)
                except json.JSONDecodeError as err:
                    raise DataError(f"{path}:{line_no}: malformed JSON ({err.msg})") from None
                if not isinstance(obj, dict):
                    raise DataError(f"{path}:{line_no}: expected a JSON object")
                header = header or list(obj)
                rows.append((line_no, obj))
        return header, rows
    delimiter = delimiter or ("\t" if ext in (".tsv", ".tab", ".txt") else ",")
    with open(path, encoding="utf-8", newline="") as fh:
        # Transcripts contain quotes (Common Voice writes them unescaped), so TSV is read without quoting.
        quoting = csv.QUOTE_NONE if delimiter == "\t" else csv.QUOTE_MINIMAL
        reader = csv.DictReader(fh, delimiter=delimiter, quoting=quoting)
        header = list(reader.fieldnames or [])
        rows = [(reader.line_num, row) for row in reader]
    return header, rows


def import_table(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    lang: str | None = None,
    split: str = "train",
    audio_root: str | os.PathLike | None = None,
    delimiter: str | None = None,
    on_bad: str = "skip",
    probe_durations: bool = True,
    existing: str = "refuse",
) -> dict[str, str]:
    """Import a TSV/CSV/JSONL table into ``<out_dir>/<split>.jsonl``.

    An existing manifest there is refused (``existing="refuse"``), extended by new languages (``"append"``)
    or replaced (``"replace"``).

    ``columns`` maps our fields (audio, text, lang, duration) to the table's column names; ``lang`` fixes the
    language for a table without a language column. Relative audio paths are resolved against ``audio_root``
    (default: the table's folder).
    """
    path, out_dir = os.fspath(path), os.fspath(out_dir)
    check_existing(out_dir, [split], existing)
    cols = _columns(columns)
    header, rows = read_table(path, delimiter)
    for field in ("audio", "text"):
        if cols[field] not in header:
            raise DataError(f"{path}: no column '{cols[field]}' for {field} (columns: {', '.join(header)})")
    if lang is None and cols["lang"] not in header:
        raise DataError(f"{path}: no column '{cols['lang']}' for the language; give lang=... for the whole table")
    root = os.fspath(audio_root) if audio_root is not None else os.path.dirname(os.path.abspath(path))
    utts = []
    for line_no, row in rows:
        audio = row.get(cols["audio"])
        if not audio:
            raise DataError(f"{path}:{line_no}: empty audio column '{cols['audio']}'")
        duration = row.get(cols["duration"])
        try:
            duration = float(duration) if duration not in (None, "") else None
        except ValueError:
            raise DataError(f"{path}:{line_no}: duration {duration!r} is not a number") from None
        utts.append(Utterance(
            audio=os.path.normpath(os.path.join(root, audio)), text=str(row.get(cols["text"]) or ""),
            lang=lang or str(row.get(cols["lang"]) or ""), duration=duration, row=line_no, source=path,
        ))
    report = DataReport()
    good = finalize_rows(utts, on_bad=on_bad, probe=probe_durations, report=report)
    return _write_splits({SPLIT_ALIASES.get(split, split): good}, out_dir, report, existing)


_MAGIC = ((b"RIFF", ".wav"), (b"fLaC", ".flac"), (b"OggS", ".ogg"), (b"ID3", ".mp3"), (b"\xff\xfb", ".mp3"),
          (b"\xff\xf3", ".mp3"), (b"\xff\xf2", ".mp3"), (b"FORM", ".aiff"))


def _extension(data: bytes, name: str | None) -> str:
    for magic, ext in _MAGIC:
        if data.startswith(magic):
            return ext
    ext = os.path.splitext(name or "")[1].lower()
    return ext or ".bin"  # unknown: kept as is, reported as unreadable when probed


def import_hf_disk(
    path: str | os.PathLike,
    out_dir: str | os.PathLike,
    *,
    columns: Mapping[str, str] | None = None,
    lang: str | None = None,
    split: str = "train",
    audio_root: str | os.PathLike | None = None,
    on_bad: str = "skip",
    probe_durations: bool = True,
    existing: str = "refuse",
) -> dict[str, str]:
    """Import a ``datasets`` Dataset/DatasetDict saved with ``save_to_disk``.

    The audio column may hold paths (strings, resolved against ``audio_root``, default the dataset folder), raw
    bytes, or ``Audio`` feature records ``{"bytes", "path"}``; bytes are written to ``<out_dir>/audio/<split>/``.
    Nothing is decoded through `datasets` (no torchcodec/FFmpeg). A DatasetDict gives one manifest per split
    ("validation" becomes "dev"); a plain Dataset becomes ``split``.
    """
    import datasets

    path, out_dir = os.fspath(path), os.fspath(out_dir)
    cols = _columns(columns)
    try:
        loaded = datasets.load_from_disk(path)
    except Exception as err:
        raise DataError(f"{path}: not a dataset saved with save_to_disk ({err})") from None
    parts = dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {split: loaded}
    check_existing(out_dir, list(parts), existing)
    root = os.fspath(audio_root) if audio_root is not None else path
    report = DataReport()
    splits: dict[str, list[Utterance]] = {}
    for name, ds in parts.items():
        ours = SPLIT_ALIASES.get(name, name)
        where = f"{path}[{name}]"
        for field in ("audio", "text"):
            if cols[field] not in ds.column_names:
                raise DataError(f"{where}: no column '{cols[field]}' for {field} "
                                f"(columns: {', '.join(ds.column_names)})")
        if lang is None and cols["lang"] not in ds.column_names:
            raise DataError(f"{where}: no column '{cols['lang']}' for the language; give lang=...")
        table = ds.with_format("arrow")
        utts = []
        for start in range(0, len(ds), 1000):
            chunk = table[start:start + 1000]
            audio_col = chunk.column(cols["audio"]).to_pylist()
            text_col = chunk.column(cols["text"]).to_pylist()
            lang_col = chunk.column(cols["lang"]).to_pylist() if lang is None else [lang] * len(audio_col)
            dur_col = (chunk.column(cols["duration"]).to_pylist() if cols["duration"] in ds.column_names
                       else [None] * len(audio_col))
            for k, (audio, text, code, dur) in enumerate(zip(audio_col, text_col, lang_col, dur_col)):
                row = start + k + 1
                utts.append(Utterance(
                    audio=_materialize(audio, root, out_dir, ours, row, where), text=str(text or ""),
                    lang=str(code or ""), duration=float(dur) if dur is not None else None, row=row, source=where,
                ))
        splits[ours] = finalize_rows(utts, on_bad=on_bad, probe=probe_durations, report=report)
    return _write_splits(splits, out_dir, report, existing)


def _materialize(value, root: str, out_dir: str, split: str, row: int, where: str) -> str:
    """A filesystem path for one audio cell: a path as is, bytes written under ``out_dir/audio/<split>``."""
    name = None
    if isinstance(value, dict):
        data, name = value.get("bytes"), value.get("path")
        if data is None:
            value = name
        else:
            value = data
    if isinstance(value, (bytes, bytearray)):
        data = bytes(value)
        stem = os.path.splitext(os.path.basename(name))[0] if name else f"{row:08d}"
        base, ext = os.path.join(out_dir, "audio", split, f"{row:08d}_{stem}"), _extension(data, name)
        target, k = base + ext, 0
        # never overwrite a file already there (an earlier import appended to): same bytes are reused
        while os.path.exists(target) and not _same_bytes(target, data):
            k += 1
            target = f"{base}-{k}{ext}"
        os.makedirs(os.path.dirname(target), exist_ok=True)
        if not os.path.exists(target):
            with open(target, "xb") as fh:
                fh.write(data)
        return os.path.abspath(target)
    if isinstance(value, str) and value:
        return os.path.normpath(os.path.join(root, value))
    raise DataError(f"{where} row {row}: audio cell is neither a path nor bytes ({type(value).__name__})")


def _same_bytes(path: str, data: bytes) -> bool:
    if os.path.getsize(path) != len(data):
        return False
    with open(path, "rb") as fh:
        return fh.read() == data
