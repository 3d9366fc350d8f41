"""Per-utterance character error counts of an evaluation directory.

`lasp evaluate` writes corpus-level counts per language (``results.json``) and
the decoded text of every utterance (``recogs-<lang>.txt``: id, reference,
hypothesis), but no per-utterance edit counts. The statistics need them
(the bootstrap resamples utterances), so they are recomputed here from the
recogs files with the same ``jiwer.process_characters`` call evaluate scores
with. A language's CER is then Σ edits / Σ reference characters over its
utterances, exactly evaluate's corpus-level CER; :func:`read_eval_dir` checks
that against ``results.json`` and refuses a directory where they disagree
(recogs files from another evaluation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Sequence

import jiwer
import numpy as np

from lasp.errors import DataError
from lasp.io import read_json_object


@dataclass
class LanguageScores:
    """One language of one evaluation: per-utterance ids, character edits (S + D + I) and reference characters."""

    ids: list[str]
    edits: np.ndarray   # int64 [utterances]
    chars: np.ndarray   # int64 [utterances]

    @property
    def cer(self) -> float:
        return float(self.edits.sum() / self.chars.sum())

    def __len__(self) -> int:
        return len(self.ids)


def utterance_counts(refs: Sequence[str], hyps: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
    """(edits, reference characters) per utterance, from jiwer's character alignment of each pair."""
    if len(refs) != len(hyps):
        raise ValueError(f"{len(refs)} references but {len(hyps)} hypotheses")
    out = jiwer.process_characters(list(refs), list(hyps))
    edits = np.zeros(len(refs), dtype=np.int64)
    for i, chunks in enumerate(out.alignments):
        for c in chunks:
            if c.type == "substitute" or c.type == "delete":
                edits[i] += c.ref_end_idx - c.ref_start_idx
            elif c.type == "insert":
                edits[i] += c.hyp_end_idx - c.hyp_start_idx
    chars = np.array([len(r) for r in out.references], dtype=np.int64)
    return edits, chars


def read_recogs(path: str | Path) -> tuple[list[str], list[str], list[str]]:
    """(ids, references, hypotheses) of a ``recogs-<lang>.txt`` file (id TAB reference TAB hypothesis)."""
    path = Path(path)
    ids, refs, hyps = [], [], []
    try:
        lines = path.read_text(encoding="utf-8").splitlines()
    except OSError as exc:
        raise DataError(f"{path}: cannot read ({exc.strerror or exc})") from None
    for n, line in enumerate(lines, 1):
        fields = line.split("\t")
        if len(fields) != 3:
            raise DataError(f"{path}:{n}: expected 3 tab-separated fields (id, reference, hypothesis), "
                            f"found {len(fields)}")
        if not fields[1].strip():
            raise DataError(f"{path}:{n}: utterance {fields[0]!r} has an empty reference")
        ids.append(fields[0])
        refs.append(fields[1])
        hyps.append(fields[2])
    if not ids:
        raise DataError(f"{path}: no utterances")
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise DataError(f"{path}: utterance id {dup!r} appears more than once")
    return ids, refs, hyps


def read_language(eval_dir: str | Path, lang: str) -> LanguageScores:
    ids, refs, hyps = read_recogs(Path(eval_dir) / f"recogs-{lang}.txt")
    edits, chars = utterance_counts(refs, hyps)
    return LanguageScores(ids, edits, chars)


def read_eval_dir(eval_dir: str | Path, languages: Sequence[str] | None = None) -> dict[str, LanguageScores]:
    """Per-utterance scores of every language of an evaluation directory (``results.json`` + recogs files).

    ``languages`` defaults to those of ``results.json``. Each recomputed CER must equal the one in
    ``results.json``: a mismatch means the recogs files and the results come from different evaluations.
    """
    eval_dir = Path(eval_dir)
    results_path = eval_dir / "results.json"
    results = read_json_object(results_path, "lasp evaluation result", DataError,
                               hint="run `lasp evaluate` for this system first")
    reported = results.get("languages")
    if not isinstance(reported, dict):
        raise DataError(f"{results_path}: no 'languages' object")
    langs = list(languages) if languages is not None else sorted(reported)
    out = {}
    for lang in langs:
        if lang not in reported:
            raise DataError(f"{results_path}: no results for language {lang!r}")
        scores = read_language(eval_dir, lang)
        want = reported[lang].get("cer")
        if want is None or not math.isclose(scores.cer, float(want), rel_tol=1e-9, abs_tol=1e-12):
            raise DataError(f"{eval_dir / f'recogs-{lang}.txt'}: CER recomputed from the recogs file is "
                            f"{scores.cer:.6f} but results.json says {want}; the files come from different "
                            "evaluations")
        out[lang] = scores
    return out
