"""Where lasp runs: the device a process computes on, the CPU settings a recipe controls (threads, oneDNN), and
what a ``precision`` setting means on a device.

``auto`` is bf16 on a GPU and fp32 on CPU (a CPU without bf16 matrix units runs bf16 slower than fp32). ``bf16``
and ``fp16`` mean autocast on either device, so the dtype logic a GPU runs (masked bf16 weight copies, fp32 master
weights and optimizer) also runs, and is tested, on CPU.

oneDNN (``torch.backends.mkldnn``) is torch's default for CPU convolutions. For the
narrow convolutions of small wav2vec 2.0 models it is the slow choice in training:
its backward of the grouped, 128-tap positional convolution takes twice as long as
torch's native kernel, and a whole fine-tuning step of the ``tiny`` preset (one
thread, batch 4 × ~2.8 s) measured 236 ms with oneDNN and 139 ms without. For
wide convolutions (the 512-channel feature encoder of ``base`` / ``xlsr-53``)
oneDNN is faster, so it stays on unless a recipe turns it off.
"""
from __future__ import annotations

import contextlib

import torch

from lasp.errors import ConfigError


def apply_cpu_settings(threads: int | None, onednn: bool) -> None:
    """Set torch's intra-op thread count (None keeps torch's default) and whether CPU ops may use oneDNN."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn


def pick_device(pref: str, local_rank: int = 0) -> torch.device:
    """``auto`` is this rank's GPU when there is one; ``cuda`` without a GPU is an error."""
    if pref == "cpu" or (pref == "auto" and not torch.cuda.is_available()):
        return torch.device("cpu")
    if not torch.cuda.is_available():
        raise ConfigError("key 'device' is 'cuda' but no CUDA device is available")
    return torch.device("cuda", local_rank)


DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}


def autocast_dtype(device: torch.device, precision: str) -> torch.dtype | None:
    """The autocast dtype of ``precision`` on ``device`` (None: no autocast, fp32)."""
    if precision == "auto":
        precision = "bf16" if device.type == "cuda" else "fp32"
    if precision == "fp32":
        return None
    if precision not in DTYPES:
        raise ConfigError(f"precision must be auto, fp32, bf16 or fp16, got {precision!r}")
    return DTYPES[precision]


def autocast(device: torch.device, dtype: torch.dtype | None):
    """``torch.autocast`` on ``device`` in ``dtype``; a no-op for None."""
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=dtype)
