"""Phoneme targets (IPA from espeak-ng) for phone-error-rate experiments.

A phoneme transcript is a sequence of IPA symbols with ``" "`` between words, so the same :class:`Vocabulary`
and CTC collator serve characters and phonemes alike (stress and length marks are kept as symbols).
"""
from __future__ import annotations

from lasp.data.espeak import engine, voice_for


def phonemize(text: str, lang: str) -> str:
    """IPA transcription of ``text`` in language ``lang`` (DataError if espeak-ng lacks the language)."""
    if not text.strip():
        return ""
    return " ".join(engine().phonemes(text, voice_for(lang)).split())
