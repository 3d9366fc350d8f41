"""Transcript normalization and the shared character vocabulary for multilingual CTC.

The vocabulary is written as a Hugging Face ``vocab.json`` that ``Wav2Vec2CTCTokenizer`` loads unchanged:
``<pad>`` (id 0, also the CTC blank, as in HF), ``<unk>`` (1), the word delimiter ``|`` (2), then the characters
of all languages, sorted so the ids do not depend on the order the corpora were read in.
"""
from __future__ import annotations

import json
import os
import re
import unicodedata
from typing import Iterable, Sequence

from lasp.errors import DataError
from lasp.io import atomic_write_json

PAD, UNK, WORD_DELIMITER = "<pad>", "<unk>", "|"
SPECIAL_TOKENS = (PAD, UNK, WORD_DELIMITER)

# Languages where a word-internal apostrophe is part of the spelling ("don't", "l'uomo", "d'água").
# Elsewhere (e.g. Turkish "İstanbul'da") it only separates a suffix and is dropped.
APOSTROPHE_LANGS = frozenset({"en", "fr", "it", "ca", "pt", "nl", "br", "oc"})
# Turkic languages with dotted/dotless i: Python's str.lower() maps "I" to "i", which is wrong there.
_TURKIC = frozenset({"tr", "az", "crh", "gag", "tt", "kk"})
_APOSTROPHES = "'\u2019\u02bc\u2018`\u00b4"
_SPACES = re.compile(r"\s+")


def normalize_text(
    text: str,
    lang: str | None = None,
    *,
    lowercase: bool = True,
    strip_punctuation: bool = True,
    keep: str = "",
) -> str:
    """Unicode NFKC, language-aware lowercasing, punctuation/symbol removal, whitespace collapsing.

    Punctuation and symbols (Unicode categories P* and S*) become spaces, so "well-known" gives "well known";
    characters in ``keep`` survive. Word-internal apostrophes are kept (as ``'``) for languages in
    :data:`APOSTROPHE_LANGS` and deleted elsewhere. Letters, combining marks and digits are never touched.
    """
    text = unicodedata.normalize("NFKC", text)
    base = (lang or "").split("-")[0].split("_")[0].lower()
    if lowercase:
        if base in _TURKIC:
            text = text.replace("I", "ı").replace("İ", "i")
        text = text.lower()
    if strip_punctuation:
        text = _strip_punctuation(text, keep_apostrophe=base in APOSTROPHE_LANGS, keep=keep)
    return _SPACES.sub(" ", text).strip()


def _strip_punctuation(text: str, *, keep_apostrophe: bool, keep: str) -> str:
    out = []
    n = len(text)
    for i, ch in enumerate(text):
        if ch in keep:
            out.append(ch)
        elif ch in _APOSTROPHES:
            inside = 0 < i < n - 1 and text[i - 1].isalpha() and text[i + 1].isalpha()
            if inside and keep_apostrophe:
                out.append("'")
            elif not inside:
                out.append(" ")
            # inside a word but not kept: join the two halves ("istanbul'da" -> "istanbulda")
        elif unicodedata.category(ch)[0] in "PS":
            out.append(" ")
        elif unicodedata.category(ch) in ("Cc", "Cf") and not ch.isspace():
            continue  # zero-width joiners, BOMs, control characters
        else:
            out.append(ch)
    return "".join(out)


class Vocabulary:
    """Character vocabulary shared by all languages; see the module docstring for the id layout."""

    def __init__(self, tokens: Sequence[str]):
        if tuple(tokens[:3]) != SPECIAL_TOKENS:
            raise DataError(f"vocabulary must start with {SPECIAL_TOKENS}, got {tuple(tokens[:3])}")
        if len(set(tokens)) != len(tokens):
            raise DataError("vocabulary has duplicate tokens")
        self.tokens = list(tokens)
        self.index = {t: i for i, t in enumerate(self.tokens)}

    # -- construction ---------------------------------------------------------------------------------------
    @classmethod
    def build(cls, texts: Iterable[str]) -> "Vocabulary":
        """All characters of ``texts`` (already normalized); spaces become the word delimiter."""
        chars: set[str] = set()
        for text in texts:
            chars.update(text)
        chars.discard(" ")
        chars.difference_update(SPECIAL_TOKENS)
        return cls([*SPECIAL_TOKENS, *sorted(chars)])

    def save(self, directory: str | os.PathLike) -> str:
        """Write ``vocab.json`` (token -> id) into ``directory``; returns its path."""
        directory = os.fspath(directory)
        os.makedirs(directory, exist_ok=True)
        path = os.path.join(directory, "vocab.json")
        atomic_write_json(path, self.index, indent=1, ensure_ascii=False)
        return path

    @classmethod
    def load(cls, path: str | os.PathLike) -> "Vocabulary":
        """Read a ``vocab.json`` (or a directory holding one)."""
        path = os.fspath(path)
        if os.path.isdir(path):
            path = os.path.join(path, "vocab.json")
        try:
            with open(path, encoding="utf-8") as fh:
                mapping = json.load(fh)
        except FileNotFoundError:
            raise DataError(f"{path}: vocabulary file not found") from None
        except json.JSONDecodeError as err:
            raise DataError(f"{path}: malformed vocab.json ({err.msg})") from None
        if not isinstance(mapping, dict) or not all(isinstance(v, int) for v in mapping.values()):
            raise DataError(f"{path}: vocab.json must map tokens to integer ids")
        ids = sorted(mapping.values())
        if ids != list(range(len(ids))):
            raise DataError(f"{path}: token ids must be 0..{len(ids) - 1} without gaps")
        tokens = [t for t, _ in sorted(mapping.items(), key=lambda kv: kv[1])]
        try:
            return cls(tokens)
        except DataError as err:
            raise DataError(f"{path}: {err}") from None

    # -- use ----------------------------------------------------------------------------------------------
    def __len__(self) -> int:
        return len(self.tokens)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Vocabulary) and self.tokens == other.tokens

    @property
    def pad_id(self) -> int:
        return self.index[PAD]

    @property
    def unk_id(self) -> int:
        return self.index[UNK]

    def unknown_chars(self, text: str) -> set[str]:
        """Characters of ``text`` (other than spaces) that have no id."""
        return {c for c in text if c != " " and c not in self.index}

    def encode(self, text: str, *, strict: bool = False) -> list[int]:
        """Character ids; spaces map to ``|``. Unknown characters give ``<unk>``, or DataError if ``strict``."""
        ids = []
        for ch in text:
            tok = WORD_DELIMITER if ch == " " else ch
            i = self.index.get(tok)
            if i is None:
                if strict:
                    raise DataError(f"character {ch!r} (U+{ord(ch):04X}) is not in the vocabulary")
                i = self.unk_id
            ids.append(i)
        return ids

    def decode(self, ids: Iterable[int], *, ctc: bool = False) -> str:
        """Text for ``ids``; with ``ctc=True`` repeats are merged and blanks (``<pad>``) dropped first."""
        out, prev = [], None
        for i in ids:
            i = int(i)
            if ctc:
                if i == prev:
                    continue
                prev = i
            if i == self.pad_id or i < 0 or i >= len(self.tokens):
                continue
            tok = self.tokens[i]
            out.append(" " if tok == WORD_DELIMITER else tok)
        return _SPACES.sub(" ", "".join(out)).strip()

    def tokenizer(self, directory: str | os.PathLike | None = None):
        """A ``Wav2Vec2CTCTokenizer`` over this vocabulary (written to ``directory`` or a temporary folder)."""
        import tempfile

        from transformers import Wav2Vec2CTCTokenizer

        if directory is None:
            with tempfile.TemporaryDirectory() as tmp:
                return self._make_tokenizer(Wav2Vec2CTCTokenizer, self.save(tmp))
        return self._make_tokenizer(Wav2Vec2CTCTokenizer, self.save(directory))

    @staticmethod
    def _make_tokenizer(cls, vocab_file: str):
        # No <s>/</s>: they are not in the vocabulary and would otherwise be appended as extra ids.
        return cls(
            vocab_file, unk_token=UNK, pad_token=PAD, word_delimiter_token=WORD_DELIMITER,
            bos_token=None, eos_token=None, do_lower_case=False,
        )
