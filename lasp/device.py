"""CPU execution settings a recipe controls: intra-op threads and oneDNN kernels.

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


def apply_cpu_settings(threads: int | None, onednn: bool) -> None:
    """Set torch's intra-op thread count (None keeps torch's default) and whether CPU ops may use oneDNN."""
    if threads is not None:
        torch.set_num_threads(threads)
    torch.backends.mkldnn.enabled = onednn
