"""From a recipe's data section to DataLoaders: manifests, datasets, the vocabulary, the sampler, the collators.

Every stage (mask search, pre-training, fine-tuning, evaluation, ``lasp data bench``) builds its batches through
these functions, so the same audio becomes the same ``input_values`` everywhere (see :mod:`lasp.data.collate`).
Batches come from a ``torch.utils.data.DataLoader`` whose ``batch_sampler`` decides the indices: decoding,
resampling and collating run in ``data.num_workers`` worker processes, ``data.prefetch_factor`` batches ahead.
"""
from __future__ import annotations

import signal
from pathlib import Path
from typing import Iterable, Sequence

import torch

from lasp.data.collate import CTCCollator, PretrainCollator
from lasp.data.config import DataConfig
from lasp.data.dataset import SpeechDataset
from lasp.data.manifest import read_manifest
from lasp.data.sampler import LanguageBatchSampler
from lasp.data.text import Vocabulary, normalize_text
from lasp.errors import ConfigError, DataError


def read_split(data: DataConfig, split: str, languages: Sequence[str] | None = None):
    """The utterances of ``data.<split>`` restricted to ``languages`` (or data.languages)."""
    path = getattr(data, split)
    if not path:
        raise ConfigError(f"key 'data.{split}' is required here (a manifest path)")
    utts = read_manifest(path)
    wanted = list(languages or data.languages)
    if wanted:
        present = {u.lang for u in utts}
        missing = [l for l in wanted if l not in present]
        if missing:
            raise DataError(f"{path}: no utterances for language {missing[0]!r} (has {', '.join(sorted(present))})")
        utts = [u for u in utts if u.lang in set(wanted)]
    if not utts:
        raise DataError(f"{path}: no utterances")
    return utts


def load_vocab(data: DataConfig, train_utts, fallback_dir: str | Path):
    """The shared character vocabulary: data.vocab if it holds one, else built from the training text and saved."""
    target = Path(data.vocab) if data.vocab else Path(fallback_dir)
    if (target / "vocab.json").is_file():
        return Vocabulary.load(target)
    vocab = Vocabulary.build(normalize_text(u.text, u.lang) for u in train_utts)
    vocab.save(target)
    return vocab


def make_dataset(data: DataConfig, utts, vocab=None):
    """Training data: rows longer than data.max_seconds (or unspellable with ``vocab``) are skipped and counted."""
    ds = SpeechDataset(utts, vocab=vocab, on_bad=data.on_bad, max_seconds=data.max_seconds)
    if len(ds) == 0:
        raise DataError(f"no usable utterances in {utts[0].source if utts else 'the manifest'}")
    return ds


def make_sampler(data: DataConfig, dataset, seed: int, rank: int = 0, world_size: int = 1,
                 mixed: bool | None = None):
    return LanguageBatchSampler(list(dataset.langs), list(dataset.durations), batch_size=data.batch_size,
                                max_batch_seconds=data.max_batch_seconds, alpha=data.alpha,
                                mixed=data.mixed if mixed is None else mixed, seed=seed, rank=rank,
                                world_size=world_size)


def make_loader(dataset, batches: Iterable[list[int]], collator, *, num_workers: int = 0, prefetch_factor: int = 2,
                pin_memory: bool = False) -> torch.utils.data.DataLoader:
    """A DataLoader over ``dataset`` taking its index batches from ``batches`` (a sampler or a list).

    It draws nothing from the process's RNGs: a DataLoader seeds its workers from a generator each time an
    iterator starts, and drawing that seed from torch's global RNG would shift every random number training
    draws after it; a resumed run starts its iterator at another step than the run it continues. What is
    random in a batch (pre-training's masked spans and negatives) is seeded by the batch's items instead
    (:mod:`lasp.data.collate`). Workers ignore Ctrl-C and SIGTERM: the training process stops them after
    finishing its step (:mod:`lasp.train.stops`).
    """
    if num_workers < 0:
        raise ConfigError(f"key 'data.num_workers' must be >= 0, got {num_workers}")
    if prefetch_factor < 1:
        raise ConfigError(f"key 'data.prefetch_factor' must be >= 1, got {prefetch_factor}")
    return torch.utils.data.DataLoader(
        dataset, batch_sampler=batches, collate_fn=collator, num_workers=num_workers, pin_memory=pin_memory,
        prefetch_factor=prefetch_factor if num_workers > 0 else None, generator=torch.Generator().manual_seed(0),
        worker_init_fn=_ignore_stop_signals if num_workers > 0 else None)


def _ignore_stop_signals(_worker_id: int) -> None:
    # a terminal's Ctrl-C reaches the whole process group: a worker that died of it would fail the step the
    # training process is finishing before it stops
    for signum in (signal.SIGINT, signal.SIGTERM):
        signal.signal(signum, signal.SIG_IGN)


def recipe_loader(data: DataConfig, dataset, batches, collator, device: torch.device | str = "cpu"):
    """:func:`make_loader` with the recipe's worker settings; pinned memory when batches go to a GPU."""
    return make_loader(dataset, batches, collator, num_workers=data.num_workers,
                       prefetch_factor=data.prefetch_factor, pin_memory=torch.device(device).type == "cuda")


def pretrain_collator(cfg, model_config, normalize: bool):
    """Pre-training batches with the recipe's span masking and negatives (pretrain.*), seeded by ``cfg.seed``."""
    p = cfg.pretrain
    return PretrainCollator(model_config, mask_time_prob=p.mask_time_prob, mask_time_length=p.mask_time_length,
                            num_negatives=p.num_negatives, normalize=normalize, seed=cfg.seed)


def ctc_collator(model_config, vocab, normalize: bool):
    return CTCCollator(model_config, pad_id=vocab.pad_id, normalize=normalize)
