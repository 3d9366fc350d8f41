"""From the recipe's data section to the batch streams the loop consumes.

Datasets, the vocabulary and the language-balanced sampler come from
:mod:`lasp.data`. Batches are padded here; the pre-training span masks and
negatives are drawn from a numpy generator seeded by (seed, rank, step), so a
step's batch does not depend on what ran before it — a resumed run draws the
very same masks.
"""
from __future__ import annotations

import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import torch

from lasp.config_schema import DataConfig
from lasp.errors import ConfigError, DataError
from lasp.train.loop import Batch


def step_rng(seed: int, step: int, rank: int = 0, salt: str = "") -> np.random.Generator:
    return np.random.default_rng([int(seed), int(step), int(rank), zlib.crc32(salt.encode())])


def read_split(data: DataConfig, split: str, languages: Sequence[str] | None = None):
    """The utterances of ``data.<split>`` restricted to ``languages`` (or data.languages)."""
    from lasp.data.manifest import read_manifest

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
    from lasp.data.text import Vocabulary, normalize_text

    target = Path(data.vocab) if data.vocab else Path(fallback_dir)
    if (target / "vocab.json").is_file():
        return Vocabulary.load(target)
    vocab = Vocabulary.build(normalize_text(u.text, u.lang) for u in train_utts)
    vocab.save(target)
    return vocab


def make_dataset(data: DataConfig, utts, vocab=None):
    from lasp.data.dataset import SpeechDataset

    ds = SpeechDataset(utts, vocab=vocab, on_bad=data.on_bad, max_seconds=data.max_seconds)
    if len(ds) == 0:
        raise DataError(f"no usable utterances in {utts[0].source if utts else 'the manifest'}")
    return ds


def make_sampler(data: DataConfig, dataset, seed: int, rank: int = 0, world_size: int = 1, mixed: bool | None = None):
    from lasp.data.sampler import LanguageBatchSampler

    return LanguageBatchSampler(list(dataset.langs), list(dataset.durations), batch_size=data.batch_size,
                                max_batch_seconds=data.max_batch_seconds, alpha=data.alpha,
                                mixed=data.mixed if mixed is None else mixed, seed=seed, rank=rank,
                                world_size=world_size)


def pad_waveforms(waves: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Zero-pad 1-D waveforms to a (B, T) batch; also return the (B, T) attention mask."""
    waves = [torch.as_tensor(np.asarray(w, dtype=np.float32)).reshape(-1) for w in waves]
    lengths = [int(w.numel()) for w in waves]
    out = torch.zeros(len(waves), max(lengths))
    mask = torch.zeros(len(waves), max(lengths), dtype=torch.long)
    for i, w in enumerate(waves):
        out[i, : lengths[i]] = torch.as_tensor(w, dtype=torch.float32).reshape(-1)
        mask[i, : lengths[i]] = 1
    return out, mask


def pad_labels(labels: list[Sequence[int]]) -> torch.Tensor:
    """CTC targets padded with -100 (ignored by the loss)."""
    out = torch.full((len(labels), max(len(l) for l in labels)), -100, dtype=torch.long)
    for i, l in enumerate(labels):
        out[i, : len(l)] = torch.as_tensor(list(l), dtype=torch.long)
    return out


def pretrain_inputs(model, waves, *, mask_time_prob: float, mask_time_length: int, num_negatives: int,
                    rng: np.random.Generator) -> dict[str, torch.Tensor]:
    """Padded inputs plus wav2vec 2.0 span masks and sampled negatives for Wav2Vec2ForPreTraining."""
    from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

    values, attn = pad_waveforms(waves)
    config = model.config
    seq_len = int(model._get_feat_extract_output_lengths(values.shape[1]))
    frame_mask = model._get_feature_vector_attention_mask(seq_len, attn) if attn is not None else None
    # HF draws from numpy's global generator: run it on a state derived from our per-step generator
    saved = np.random.get_state()
    np.random.seed(int(rng.integers(0, 2**31 - 1)))
    try:
        mask = _compute_mask_indices((values.shape[0], seq_len), mask_prob=mask_time_prob,
                                     mask_length=mask_time_length, attention_mask=frame_mask, min_masks=2)
        negatives = _sample_negative_indices((values.shape[0], seq_len), num_negatives, mask_time_indices=mask)
    finally:
        np.random.set_state(saved)
    inputs = {"input_values": values,
              "mask_time_indices": torch.as_tensor(mask, dtype=torch.bool),
              "sampled_negative_indices": torch.as_tensor(negatives, dtype=torch.long)}
    if config.feat_extract_norm == "layer":  # group-norm models (wav2vec2-base) are trained without a mask
        inputs["attention_mask"] = attn
    return inputs


def ctc_inputs(model, waves, labels) -> dict[str, torch.Tensor]:
    values, attn = pad_waveforms(waves)
    inputs = {"input_values": values, "labels": pad_labels(labels)}
    if model.config.feat_extract_norm == "layer":
        inputs["attention_mask"] = attn
    return inputs


class SamplerStream:
    """Batches of ``dataset`` in the order of a resumable sampler; ``build(items, step)`` makes model inputs."""

    def __init__(self, dataset, sampler, build, device: torch.device | str = "cpu"):
        self.dataset = dataset
        self.sampler = sampler
        self.build = build
        self.device = torch.device(device)
        self._it = iter(sampler)

    def next(self, step: int) -> Batch:
        items: list = []
        while not items:  # an undecodable file yields None (reported and counted by the dataset)
            items = [it for it in (self.dataset[i] for i in next(self._it)) if it is not None]
        inputs = self.build(items, step)
        inputs = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in inputs.items()}
        return Batch(inputs, [it["lang"] for it in items])

    def state_dict(self) -> dict:
        return self.sampler.state_dict()

    def load_state_dict(self, state: dict) -> None:
        self.sampler.load_state_dict(state)
        self._it = iter(self.sampler)


def language_batches(dataset, lang: str, batch_size: int, build, count: int, seed: int = 0):
    """``count`` batches of one language (for mask scoring / IMP), deterministic; cycles if the language is small."""
    idx = [i for i, l in enumerate(dataset.langs) if l == lang]
    if not idx:
        raise DataError(f"no training utterances for language {lang!r}")
    rng = np.random.default_rng([seed, zlib.crc32(lang.encode())])
    order = list(rng.permutation(idx))
    out = []
    for b in range(count):
        chosen = [order[(b * batch_size + j) % len(order)] for j in range(batch_size)]
        items = [it for it in (dataset[i] for i in chosen) if it is not None]
        if items:
            out.append(build(items, b))
    return out
