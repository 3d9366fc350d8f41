"""The training loop's batch stream: a DataLoader driven by the resumable language sampler.

The DataLoader's workers prefetch ahead of the loop, so the sampler's own position runs ahead of what training
consumed. The stream therefore counts the batches the loop actually took and saves the sampler's state *at that
count*; on resume the sampler is put back there and the prefetched-but-unused batches are drawn again, so a
resumed run sees exactly the batches an uninterrupted one would have.

Rows the dataset could not decode come with their batch (``batch["skipped"]``, also from worker processes); the
stream keeps them in ``skipped_rows`` (saved with its state, so a resumed run keeps counting) for the stage's
summary.
"""
from __future__ import annotations

import torch

from lasp.data.collate import has_inputs
from lasp.train.loop import Batch


class LoaderStream:
    def __init__(self, loader: torch.utils.data.DataLoader, sampler, device: torch.device | str = "cpu"):
        self.loader, self.sampler = loader, sampler
        self.device = torch.device(device)
        self._start = sampler.step  # sampler batches consumed before the current iterator started
        self._taken = 0
        self._it = None
        self.skipped_rows: list[dict] = []  # {"row": "<manifest>:<line> (<audio>): <why>", "reason": ...}

    def next(self, step: int) -> Batch:
        if self._it is None:
            # a DataLoader iterator draws its workers' base seed from torch's global RNG; a resumed run makes its
            # iterator at another point of that stream than an uninterrupted run, so the draw must not move it
            # (pre-training's Gumbel noise and masking draw from it next)
            with torch.random.fork_rng(devices=[]):
                self._it = iter(self.loader)
        batch = None
        while not has_inputs(batch):  # a batch whose every row was undecodable is skipped (its rows counted)
            batch = next(self._it)
            self._taken += 1
            self.skipped_rows += [{"row": str(bad), "reason": bad.reason} for bad in batch.pop("skipped", ())]
        langs = batch.pop("langs")
        inputs = {k: v.to(self.device, non_blocking=True) for k, v in batch.items() if torch.is_tensor(v)}
        return Batch(inputs, langs)

    def state_dict(self) -> dict:
        return {**self.sampler.state_dict(step=self._start + self._taken), "skipped_rows": list(self.skipped_rows)}

    def load_state_dict(self, state: dict) -> None:
        self._it = None  # drops the prefetching iterator (and its workers) before the sampler moves
        self.sampler.load_state_dict(state)
        self._start, self._taken = self.sampler.step, 0
        self.skipped_rows = list(state.get("skipped_rows", []))


def skipped_rows_summary(before: list, during: list[list[dict]]) -> dict:
    """The summary's ``skipped_rows``: rows dropped when the dataset was checked (``before``: BadRows) and rows
    that failed to decode while training (``during``: each rank's :attr:`LoaderStream.skipped_rows`)."""
    rows = [{"row": str(bad), "reason": bad.reason} for bad in before] + [r for rank in during for r in rank]
    reasons: dict[str, int] = {}
    for r in rows:
        reasons[r["reason"]] = reasons.get(r["reason"], 0) + 1
    return {"count": len(rows), "before_training": len(before), "while_training": len(rows) - len(before),
            "by_reason": reasons, "first": [r["row"] for r in rows[:20]]}
