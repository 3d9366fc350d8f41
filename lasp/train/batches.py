"""The training loop's batch stream: a DataLoader driven by the resumable language sampler.

The DataLoader's workers prefetch ahead of the loop, so the sampler's own position runs ahead of what training
consumed. The stream therefore counts the batches the loop actually took and saves the sampler's state *at that
count*; on resume the sampler is put back there and the prefetched-but-unused batches are drawn again, so a
resumed run sees exactly the batches an uninterrupted one would have.
"""
from __future__ import annotations

import torch

from lasp.train.loop import Batch


class LoaderStream:
    def __init__(self, loader: torch.utils.data.DataLoader, sampler, device: torch.device | str = "cpu"):
        self.loader, self.sampler = loader, sampler
        self.device = torch.device(device)
        self._start = sampler.step  # sampler batches consumed before the current iterator started
        self._taken = 0
        self._it = None

    def next(self, step: int) -> Batch:
        if self._it is None:
            # a DataLoader iterator draws its workers' base seed from torch's global RNG; a resumed run makes its
            # iterator at another point of that stream than an uninterrupted run, so the draw must not move it
            # (pre-training's Gumbel noise and masking draw from it next)
            with torch.random.fork_rng(devices=[]):
                self._it = iter(self.loader)
        batch = None
        while batch is None:  # a batch whose every row was undecodable (reported by the dataset) is skipped
            batch = next(self._it)
            self._taken += 1
        langs = batch.pop("langs")
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        return Batch(inputs, langs)

    def state_dict(self) -> dict:
        return self.sampler.state_dict(step=self._start + self._taken)

    def load_state_dict(self, state: dict) -> None:
        self._it = None  # drops the prefetching iterator (and its workers) before the sampler moves
        self.sampler.load_state_dict(state)
        self._start, self._taken = self.sampler.step, 0
