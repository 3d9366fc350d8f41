"""How fast the input pipeline feeds a model: decode + resample + collate, in seconds of audio per second.

The batches are the training stream's own (the language sampler over a manifest, the pre-training collator
with its span masks and negatives), fetched through the same DataLoader as training with 0, 1, 2, ... worker
processes. The first batch of every run is excluded from the timing, so worker start-up is not counted.
"""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import Sequence

from lasp.data.manifest import read_manifest
from lasp.data.pipeline import make_dataset, make_loader, make_sampler, pretrain_collator
from lasp.errors import ConfigError
from lasp.models.features import feature_normalization
from lasp.models.load import is_preset, preset_config


@dataclass
class Throughput:
    workers: int
    batches: int
    audio_s: float
    wall_s: float

    @property
    def audio_per_s(self) -> float:
        return self.audio_s / self.wall_s if self.wall_s > 0 else float("inf")

    def line(self) -> str:
        return (f"workers {self.workers}: {self.audio_per_s:8.1f} s of audio per second "
                f"({self.batches} batches, {self.audio_s:.1f} s of audio in {self.wall_s:.2f} s)")


def measure(cfg, manifest: str, *, workers: Sequence[int] = (0, 2), batches: int = 40) -> list[Throughput]:
    """Decode + collate throughput of ``batches`` batches of ``manifest`` for each worker count, with the
    recipe's data settings, pre-training collator and model (``model.name``: normalization, feature encoder)."""
    if batches < 2:
        raise ConfigError("--batches must be >= 2 (the first batch is not timed)")
    dataset = make_dataset(cfg.data, read_manifest(manifest))
    model = cfg.model.name
    if is_preset(model):
        config = preset_config(model, **cfg.model.overrides)
    else:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model, local_files_only=True)
    collator = pretrain_collator(cfg, config, feature_normalization(model))
    sampler = make_sampler(cfg.data, dataset, cfg.seed)
    plan = [sampler.next_batch() for _ in range(batches)]
    durations = dataset.durations
    timed_audio = sum(durations[i] for batch in plan[1:] for i in batch)
    from transformers.models.wav2vec2 import modeling_wav2vec2  # noqa: F401  (the collator's import, seconds)

    out = []
    for n in workers:
        loader = make_loader(dataset, plan, collator, num_workers=n, prefetch_factor=cfg.data.prefetch_factor)
        it = iter(loader)
        next(it)
        start = time.perf_counter()
        count = sum(1 for _ in it)
        out.append(Throughput(n, count, timed_audio, time.perf_counter() - start))
        del it
    return out
