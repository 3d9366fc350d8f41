"""What `lasp prune` checks before it loads a model or scores anything.

Scoring one language of XLSR-53 takes about a minute, so a bad ``--out`` or language is reported first (the
recipe's values, sparsity and pattern among them, were checked when it loaded: :meth:`MaskConfig.check`). An
existing mask set in ``--out`` is the user's: it is kept unless ``--append`` (add or replace the named
languages; the others keep their own records) or ``--force`` (replace the set) says otherwise. The set's
folder is locked for this process: one writer per mask set.
"""
from __future__ import annotations

import os
from typing import Sequence

from lasp.errors import ConfigError, DataError, MaskError
from lasp.locks import acquire
from lasp.masks.store import CONFIG_NAME, check_mask_dir, remove_mask_set
from lasp.data.manifest import read_manifest
from lasp.languages import check_language_code


def check_prune_request(out: str, manifest: str, *, languages: Sequence[str] | None, min_utterances: int,
                        existing: str = "refuse") -> None:
    """Raise a one-line error for anything that would make the scoring wasted; then lock ``out``.

    ``existing``: "refuse" (default), "append" or "replace" (deletes the old set's own files, nothing else).
    """
    if os.path.exists(out) and not os.path.isdir(out):
        raise ConfigError(f"--out {out} is a file; give a folder for the mask set")
    check_mask_dir(out, replace=existing == "replace")  # --force also clears a set whose save was killed
    has_set = os.path.isfile(os.path.join(out, CONFIG_NAME))
    if has_set and existing == "refuse":
        raise MaskError(f"--out {out} already holds a mask set; add --append to add (or replace) the languages "
                        "you prune, keeping the others, or --force to replace the whole set")
    for lang in languages or []:
        check_language_code(lang, "--langs")
    if languages:
        check_language_rows(manifest, languages, min_utterances, "--min-utterances")
    else:
        check_language_rows(manifest, sorted({u.lang for u in read_manifest(manifest)}), min_utterances,
                            "--min-utterances")
    acquire(out, "mask set")  # held until the command ends
    if has_set and existing == "replace":
        remove_mask_set(out)


def check_language_rows(manifest: str | None, languages: Sequence[str], minimum: int, key: str) -> None:
    """Every language a mask is searched for needs ``minimum`` rows: a stray tag must not become a sub-network."""
    if not manifest or minimum <= 0:
        return
    counts: dict[str, int] = {}
    for utt in read_manifest(manifest):
        counts[utt.lang] = counts.get(utt.lang, 0) + 1
    for lang in languages:
        if counts.get(lang, 0) == 0:
            raise DataError(f"{manifest}: no usable utterance of language {lang!r}; languages present: "
                            f"{', '.join(sorted(counts)) or 'none'}")
        if counts.get(lang, 0) < minimum:
            raise DataError(f"{manifest}: language {lang!r} has {counts.get(lang, 0)} row(s), fewer than "
                            f"{key}={minimum} needed to search its mask; fix or drop those rows, choose the "
                            f"languages to use, or lower {key}")
