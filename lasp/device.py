"""Where lasp runs: the device a process computes on, and the CPU settings a recipe controls (threads, oneDNN).

oneDNN (``torch.backends.mkldnn``) is torch's default for CPU convolutions. For the
narrow convolutions of small wav2vec 2.0 models it is the slow choice in training:
its backward of the grouped, 128-tap positional convolution takes twice as long as
torch's native kernel, and a whole fine-tuning step of the ``tiny`` preset (one
thread, batch 4 × ~2.8 s) measured 236 ms with oneDNN and 139 ms without. For
wide convolutions (the 512-channel feature encoder of ``base`` / ``xlsr-53``)
oneDNN is faster, so it stays on unless a recipe turns it off.
"""
from __future__ import annotations

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
