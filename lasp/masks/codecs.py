"""Byte codes for packed mask bits on disk: plain packed bits, a run-length code, and zstandard.

Every codec turns the packed bytes of one tensor (the layout of :mod:`lasp.masks.bits`, 1 bit per weight) into
a byte string and back, exactly. Which one a mask set uses is measured, not guessed: ``lasp masks size`` prints
the bytes of each codec on a mask set (docs/continual.md has the numbers on the benchmark's masks and at
XLSR-53 shapes), and :data:`DEFAULT_CODEC` is the one that won there.

  packed  the packed bytes as they are: 1 bit per weight, whatever the mask
  rle     lengths of the alternating runs of 0 and 1 bits (starting with 0), each a LEB128 varint: small for
          masks made of long runs (structured pruning, empty deltas), large for scattered bits (≥ 1 byte per run)
  zstd    zstandard (level 3, its default) on the packed bytes: its entropy coder gets close to the bits' entropy for
          scattered bits of any density, and finds long runs too
"""
from __future__ import annotations

import numpy as np

from lasp.errors import MaskError

CODECS = ("packed", "rle", "zstd")
DEFAULT_CODEC = "zstd"
ZSTD_LEVEL = 3


def _zstd():
    try:
        import zstandard
    except ImportError:
        raise MaskError("the zstd mask codec needs the zstandard package (pip install zstandard; it is in lasp's "
                        "requirements)") from None
    return zstandard


def encode(packed: np.ndarray, codec: str) -> bytes:
    """The bytes of ``codec`` for one tensor's packed mask (uint8, any shape)."""
    data = np.ascontiguousarray(packed, dtype=np.uint8).reshape(-1)
    if codec == "packed":
        return data.tobytes()
    if codec == "rle":
        return _rle_encode(data)
    if codec == "zstd":
        # the frame's own checksum: a changed byte fails here even where the file's sha256 is not recorded
        return _zstd().ZstdCompressor(level=ZSTD_LEVEL, write_checksum=True).compress(data.tobytes())
    raise MaskError(f"unknown mask codec {codec!r}; choose one of {', '.join(CODECS)}")


def decode(blob: bytes, codec: str, size: int) -> np.ndarray:
    """The ``size`` packed bytes (uint8, flat) that :func:`encode` turned into ``blob``."""
    if codec == "packed":
        out = np.frombuffer(blob, dtype=np.uint8)
    elif codec == "rle":
        out = _rle_decode(blob, size)
    elif codec == "zstd":
        try:
            out = np.frombuffer(_zstd().ZstdDecompressor().decompress(blob, max_output_size=size), dtype=np.uint8)
        except _zstd().ZstdError as err:
            raise MaskError(f"corrupt zstd mask data ({err})") from None
    else:
        raise MaskError(f"unknown mask codec {codec!r}; choose one of {', '.join(CODECS)}")
    if out.size != size:
        raise MaskError(f"{codec} mask data decodes to {out.size} bytes, expected {size}")
    return out.copy()


def _varints(values: np.ndarray) -> bytes:
    """LEB128: 7 bits per byte, least significant group first, high bit set on every byte but the last."""
    v = values.astype(np.uint64)
    nbytes = np.ones(v.shape, dtype=np.int64)
    for k in range(1, 10):
        nbytes += v >= np.uint64(1 << (7 * k))
    ends = np.cumsum(nbytes)
    starts = ends - nbytes
    out = np.empty(int(ends[-1]) if len(ends) else 0, dtype=np.uint8)
    for k in range(int(nbytes.max()) if len(nbytes) else 0):
        sel = nbytes > k
        group = ((v[sel] >> np.uint64(7 * k)) & np.uint64(0x7F)).astype(np.uint8)
        out[starts[sel] + k] = group | np.where(nbytes[sel] > k + 1, 0x80, 0).astype(np.uint8)
    return out.tobytes()


def _unvarints(data: np.ndarray) -> np.ndarray:
    last = (data & 0x80) == 0
    if data.size and not last[-1]:
        raise MaskError("corrupt rle mask data (a run length is cut off)")
    group = np.concatenate([[0], np.cumsum(last)[:-1]]) if data.size else np.zeros(0, dtype=np.int64)
    starts = np.flatnonzero(np.concatenate([[True], last[:-1]])) if data.size else np.zeros(0, dtype=np.int64)
    position = np.arange(data.size) - starts[group]
    if data.size and position.max() > 9:
        raise MaskError("corrupt rle mask data (a run length longer than 64 bits)")
    parts = (data & 0x7F).astype(np.uint64) << (np.uint64(7) * position.astype(np.uint64))
    return np.add.reduceat(parts, starts) if data.size else np.zeros(0, dtype=np.uint64)


def _rle_encode(data: np.ndarray) -> bytes:
    bits = np.unpackbits(data, bitorder="little")
    if bits.size == 0:
        return b""
    change = np.flatnonzero(np.diff(bits)) + 1
    runs = np.diff(np.concatenate([[0], change, [bits.size]]))
    if bits[0]:
        runs = np.concatenate([[0], runs])  # runs alternate 0, 1, 0, ... starting with zeros
    return _varints(runs)


def _rle_decode(blob: bytes, size: int) -> np.ndarray:
    runs = _unvarints(np.frombuffer(blob, dtype=np.uint8)).astype(np.int64)
    if int(runs.sum()) != size * 8:
        raise MaskError(f"corrupt rle mask data: runs cover {int(runs.sum())} bits, expected {size * 8}")
    bits = np.repeat((np.arange(runs.size) % 2).astype(np.uint8), runs)
    return np.packbits(bits, bitorder="little")
