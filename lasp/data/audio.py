"""Audio decoding: any file libsndfile reads (wav, flac, ogg/vorbis/opus, mp3) to 16 kHz mono float32.

libsndfile (bundled with the `soundfile` wheel, >= 1.1 for mp3) and `soxr` do all the work, so no FFmpeg
system libraries are needed. Every failure becomes a :class:`~lasp.errors.DataError` that names the file and
says what is wrong with it, because a training loop that dies with "Error opening file" after an hour is useless.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np
import soundfile as sf
import soxr

from lasp.errors import DataError

SAMPLE_RATE = 16000
# Peak amplitude below which a file counts as silent (-80 dBFS): digital silence or a muted recording.
SILENCE_PEAK = 1e-4


class AudioError(DataError):
    """A DataError about one audio file; ``reason`` is a short code used to count skipped rows."""

    def __init__(self, path: str, reason: str, message: str):
        super().__init__(f"{path}: {message}")
        self.path, self.reason, self.detail = path, reason, message


@dataclass(frozen=True)
class AudioInfo:
    """What the file header says, read without decoding the samples."""

    path: str
    sample_rate: int
    channels: int
    frames: int
    format: str

    @property
    def duration(self) -> float:
        return self.frames / self.sample_rate if self.sample_rate else 0.0


def audio_info(path: str | os.PathLike) -> AudioInfo:
    """Header information for ``path``; raises DataError for a missing, unreadable or non-audio file."""
    path = os.fspath(path)
    _check_exists(path)
    try:
        info = sf.info(path)
    except Exception as err:  # libsndfile reports corrupt and non-audio files alike
        raise AudioError(path, "unreadable_audio", f"not a readable audio file ({_reason(err)})") from None
    return AudioInfo(path, int(info.samplerate), int(info.channels), int(info.frames), str(info.format))


def load_audio(
    path: str | os.PathLike,
    sample_rate: int = SAMPLE_RATE,
    *,
    min_peak: float | None = SILENCE_PEAK,
) -> np.ndarray:
    """Decode ``path`` to a mono float32 array at ``sample_rate`` (channels averaged, resampled with soxr).

    Raises DataError naming the path when the file is missing, cannot be decoded, holds no samples, contains
    NaN/inf samples, or is silent (peak amplitude below ``min_peak``; pass ``None`` to accept silence).
    """
    path = os.fspath(path)
    _check_exists(path)
    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
    except Exception as err:
        raise AudioError(path, "unreadable_audio", f"cannot decode audio ({_reason(err)})") from None
    return prepare_audio(data, sr, sample_rate, min_peak=min_peak, name=path)


def prepare_audio(
    data: np.ndarray,
    source_rate: int,
    sample_rate: int = SAMPLE_RATE,
    *,
    min_peak: float | None = SILENCE_PEAK,
    name: str = "<array>",
) -> np.ndarray:
    """Mono-mix, validate and resample decoded samples (shape (frames,) or (frames, channels))."""
    data = np.asarray(data, dtype=np.float32)
    if data.ndim == 2:
        data = data.mean(axis=1, dtype=np.float32) if data.shape[1] > 1 else data[:, 0]
    if data.size == 0:
        raise AudioError(name, "empty_audio", "audio is empty (0 samples)")
    if not np.isfinite(data).all():
        bad = int((~np.isfinite(data)).sum())
        raise AudioError(name, "nan_samples", f"audio contains {bad} NaN/inf samples")
    if min_peak is not None and float(np.abs(data).max()) < min_peak:
        raise AudioError(name, "silent_audio", f"audio is silent (peak amplitude below {min_peak:g})")
    if source_rate != sample_rate:
        # soxr's default (HQ) quality; float32 in, float32 out.
        data = soxr.resample(data, source_rate, sample_rate)
    return np.ascontiguousarray(data, dtype=np.float32)


def _check_exists(path: str) -> None:
    if not os.path.exists(path):
        raise AudioError(path, "missing_file", "audio file not found")
    if os.path.isdir(path):
        raise AudioError(path, "missing_file", "is a directory, not an audio file")


def _reason(err: Exception) -> str:
    text = str(err).strip().splitlines()[-1] if str(err).strip() else type(err).__name__
    # libsndfile messages repeat the path; keep only the part after it.
    return text.split(": ", 1)[-1] if text.startswith("Error opening") else text
