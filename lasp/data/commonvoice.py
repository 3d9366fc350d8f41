"""Common Voice importer: ``ROOT/<lang>/{train,dev,test}.tsv`` + ``ROOT/<lang>/clips/*.mp3`` -> manifests.

Only the ``path`` and ``sentence`` columns are required, so every release since v1 works. Durations come from
``clip_durations.tsv`` (newer releases) when present, otherwise from the mp3 headers. Audio is referenced where
it lies unless ``copy_audio`` is set. All languages of a split go into one manifest, each row tagged with its
language code as Common Voice spells it (``sw``, ``zh-CN``, ...).
"""
from __future__ import annotations

import filecmp
import os
import shutil
from typing import Iterable, Sequence

from lasp.data.dataset import DataReport
from lasp.data.importers import _write_splits, check_existing, finalize_rows, read_table
from lasp.data.manifest import Utterance
from lasp.errors import ConfigError, DataError

CV_SPLITS = {"train": "train", "dev": "dev", "test": "test"}


def import_commonvoice(
    root: str | os.PathLike,
    langs: Sequence[str],
    out_dir: str | os.PathLike,
    copy_audio: bool = False,
    *,
    splits: Iterable[str] = ("train", "dev", "test"),
    on_bad: str = "skip",
    probe_durations: bool | None = None,
    max_per_split: int | None = None,
    existing: str = "refuse",
) -> dict[str, str]:
    """Write ``<out_dir>/{train,dev,test}.jsonl`` for ``langs``; returns split -> manifest path.

    ``probe_durations`` defaults to reading headers only when the release has no ``clip_durations.tsv``.
    Rows whose clip is missing or unreadable are skipped and counted (or raised, with ``on_bad="error"``).
    ``max_per_split`` keeps the first N rows of each language's split (quick experiments). Manifests already
    in ``out_dir`` are refused, extended by new languages (``existing="append"``) or replaced (``"replace"``).
    """
    root, out_dir = os.fspath(root), os.fspath(out_dir)
    if not os.path.isdir(root):
        raise DataError(f"{root}: Common Voice root folder not found")
    langs = [lang.strip() for lang in langs if lang.strip()]
    if not langs:
        raise ConfigError("import_commonvoice: no languages given")
    splits = list(splits)
    unknown = [s for s in splits if s not in CV_SPLITS]
    if unknown:
        raise ConfigError(f"import_commonvoice: unknown split(s) {', '.join(unknown)} (use train, dev, test)")
    check_existing(out_dir, splits, existing)
    have = sorted(d for d in os.listdir(root) if os.path.isdir(os.path.join(root, d)))
    for lang in langs:
        if lang not in have:
            raise DataError(f"{os.path.join(root, lang)}: no such language folder (found: {', '.join(have) or 'none'})")

    report = DataReport()
    out: dict[str, list[Utterance]] = {s: [] for s in splits}
    for lang in langs:
        lang_dir = os.path.join(root, lang)
        durations = _clip_durations(os.path.join(lang_dir, "clip_durations.tsv"))
        probe = (durations is None) if probe_durations is None else probe_durations
        for split in splits:
            tsv = os.path.join(lang_dir, f"{CV_SPLITS[split]}.tsv")
            header, rows = read_table(tsv, "\t")
            missing = [c for c in ("path", "sentence") if c not in header]
            if missing:
                raise DataError(f"{tsv}: missing column(s) {', '.join(missing)} (columns: {', '.join(header)})")
            if max_per_split is not None:
                rows = rows[:max_per_split]
            utts = []
            for line_no, row in rows:
                clip = (row.get("path") or "").strip()
                if not clip:
                    raise DataError(f"{tsv}:{line_no}: empty 'path'")
                utts.append(Utterance(
                    audio=os.path.join(lang_dir, "clips", clip), text=row.get("sentence") or "", lang=lang,
                    duration=(durations or {}).get(clip), row=line_no, source=tsv,
                    id=f"{lang}/{os.path.splitext(clip)[0]}",
                ))
            good = finalize_rows(utts, on_bad=on_bad, probe=probe, report=report)
            if copy_audio:
                for utt in good:
                    target = os.path.join(out_dir, "audio", lang, os.path.basename(utt.audio))
                    os.makedirs(os.path.dirname(target), exist_ok=True)
                    if not os.path.exists(target):
                        shutil.copy2(utt.audio, target)
                    elif not filecmp.cmp(utt.audio, target, shallow=False):
                        raise DataError(f"{target} exists and differs from {utt.audio}; lasp will not "
                                        "overwrite it (choose another --out)")
                    utt.audio = os.path.abspath(target)
            out[split].extend(good)
    return _write_splits(out, out_dir, report, existing)


def _clip_durations(path: str) -> dict[str, float] | None:
    """``clip -> seconds`` from Common Voice's clip_durations.tsv (milliseconds), if the release has one."""
    if not os.path.isfile(path):
        return None
    header, rows = read_table(path, "\t")
    if len(header) < 2:
        raise DataError(f"{path}: expected columns clip and duration[ms]")
    clip_col, ms_col = header[0], header[1]
    out = {}
    for line_no, row in rows:
        try:
            out[row[clip_col]] = float(row[ms_col]) / 1000.0
        except (TypeError, ValueError):
            raise DataError(f"{path}:{line_no}: duration {row.get(ms_col)!r} is not a number") from None
    return out
