"""A minimal ctypes driver for libespeak-ng as shipped by the ``espeakng-loader`` wheel (no apt, no binary).

espeak-ng keeps global state, so one process drives one engine: the demo corpus synthesizer uses a process pool
and every worker initializes its own copy. Calls are serialized with a lock in case threads share a process.
"""
from __future__ import annotations

import ctypes
import threading

import numpy as np

from lasp.errors import DataError

_AUDIO_OUTPUT_SYNCHRONOUS = 2
_INITIALIZE_DONT_EXIT = 0x8000
_POS_CHARACTER = 1
_CHARS_UTF8 = 1
_PHONEMES_IPA = 0x02
_RATE, _VOLUME, _PITCH, _RANGE = 1, 2, 3, 4
_EE_OK = 0

# Our language codes where espeak-ng names its voice differently.
VOICE_NAMES = {"zh": "cmn", "no": "nb"}

_CALLBACK = ctypes.CFUNCTYPE(ctypes.c_int, ctypes.POINTER(ctypes.c_short), ctypes.c_int, ctypes.c_void_p)


class _Engine:
    def __init__(self) -> None:
        try:
            import espeakng_loader
        except ImportError:  # pragma: no cover - a declared dependency
            raise DataError("espeak-ng is unavailable: install the 'espeakng-loader' package") from None
        self.lib = ctypes.CDLL(espeakng_loader.get_library_path())
        self.lib.espeak_TextToPhonemes.restype = ctypes.c_char_p
        self.lib.espeak_TextToPhonemes.argtypes = [ctypes.POINTER(ctypes.c_char_p), ctypes.c_int, ctypes.c_int]
        self.lib.espeak_SetVoiceByName.argtypes = [ctypes.c_char_p]
        data = espeakng_loader.get_data_path().encode()
        self.sample_rate = self.lib.espeak_Initialize(_AUDIO_OUTPUT_SYNCHRONOUS, 0, data, _INITIALIZE_DONT_EXIT)
        if self.sample_rate <= 0:
            raise DataError(f"espeak-ng failed to initialize with data at {data.decode()}")
        self._chunks: list[np.ndarray] = []
        self._callback = _CALLBACK(self._collect)  # keep a reference: espeak holds the pointer
        self.lib.espeak_SetSynthCallback(self._callback)
        self.lock = threading.Lock()
        self._voice: str | None = None

    def _collect(self, wav, numsamples, events) -> int:
        if wav and numsamples > 0:
            self._chunks.append(np.ctypeslib.as_array(wav, shape=(numsamples,)).copy())
        return 0  # 0 = continue synthesis

    def set_voice(self, name: str) -> None:
        if name == self._voice:
            return
        if self.lib.espeak_SetVoiceByName(name.encode()) != _EE_OK:
            raise DataError(f"espeak-ng has no voice '{name}'")
        self._voice = name

    def synth(self, text: str, voice: str, *, rate: int = 175, pitch: int = 50, pitch_range: int = 50) -> np.ndarray:
        """int16 samples at :attr:`sample_rate` for ``text`` spoken by ``voice`` (e.g. "es+m3")."""
        with self.lock:
            self.set_voice(voice)
            self.lib.espeak_SetParameter(_RATE, int(rate), 0)
            self.lib.espeak_SetParameter(_PITCH, int(pitch), 0)
            self.lib.espeak_SetParameter(_RANGE, int(pitch_range), 0)
            self._chunks = []
            buf = text.encode("utf-8")
            err = self.lib.espeak_Synth(buf, len(buf) + 1, 0, _POS_CHARACTER, 0, _CHARS_UTF8, None, None)
            self.lib.espeak_Synchronize()
            if err != _EE_OK:
                raise DataError(f"espeak-ng failed (code {err}) on {text!r} with voice '{voice}'")
            chunks, self._chunks = self._chunks, []
        return np.concatenate(chunks) if chunks else np.zeros(0, np.int16)

    def phonemes(self, text: str, voice: str) -> str:
        """IPA for ``text``, clause by clause, joined with spaces."""
        with self.lock:
            self.set_voice(voice)
            ptr = ctypes.c_char_p(text.encode("utf-8"))
            parts = []
            while ptr.value:
                out = self.lib.espeak_TextToPhonemes(ctypes.byref(ptr), _CHARS_UTF8, _PHONEMES_IPA)
                if out:
                    parts.append(out.decode("utf-8").strip())
        return " ".join(p for p in parts if p)


_ENGINE: _Engine | None = None


def engine() -> _Engine:
    """The process's espeak-ng engine, initialized on first use."""
    global _ENGINE
    if _ENGINE is None:
        _ENGINE = _Engine()
    return _ENGINE


def voice_for(lang: str) -> str:
    """espeak-ng's voice name for a language code; DataError if espeak-ng has no such voice."""
    name = VOICE_NAMES.get(lang, lang)
    eng = engine()
    with eng.lock:
        try:
            eng.set_voice(name)
        except DataError:
            raise DataError(f"language '{lang}': espeak-ng has no voice for it") from None
    return name
