"""Collators: dataset items -> the tensors Wav2Vec2ForPreTraining / Wav2Vec2ForCTC take, plus ``langs``.

Both drop ``None`` items (rows the dataset skipped under ``on_bad="skip"``) and return ``None`` when nothing is
left, so a training loop skips such a batch instead of crashing. Every batch carries ``"langs"`` (one code per
example); the trainer pops it before calling the model.

Pre-training masks follow wav2vec 2.0 (mask_time_prob 0.65, spans of 10 frames, 100 negatives drawn among the
masked frames of the same utterance), computed with transformers' own ``_compute_mask_indices`` and
``_sample_negative_indices``. Those draw from NumPy's global generator, so each call runs them under a
generator seeded from (collator seed, item ids): a batch gets the same masks on every run, after a resume, and
whichever DataLoader worker builds it, and the caller's global NumPy state is left untouched.
"""
from __future__ import annotations

import contextlib
import zlib
from typing import Sequence

import numpy as np
import torch

from lasp.errors import ConfigError, DataError


def feature_lengths(config, input_lengths: Sequence[int] | torch.Tensor, add_adapter: bool | None = None) -> torch.Tensor:
    """Frames after the convolutional feature encoder (Wav2Vec2Model._get_feat_extract_output_lengths)."""
    lengths = torch.as_tensor(input_lengths, dtype=torch.long)
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    if add_adapter if add_adapter is not None else getattr(config, "add_adapter", False):
        for _ in range(config.num_adapter_layers):
            lengths = torch.div(lengths - 1, config.adapter_stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def _present(items: Sequence[dict | None]) -> list[dict]:
    return [it for it in items if it is not None]


def pad_audio(items: Sequence[dict], *, normalize: bool, attention_mask: bool) -> tuple[dict, torch.Tensor]:
    """Right-pad ``input_values`` with zeros; optional per-utterance zero-mean/unit-variance normalization."""
    lengths = [len(it["input_values"]) for it in items]
    if min(lengths) == 0:
        raise DataError(f"item {items[lengths.index(0)].get('id')}: empty input_values")
    values = torch.zeros(len(items), max(lengths), dtype=torch.float32)
    mask = torch.zeros(len(items), max(lengths), dtype=torch.long)
    for row, (it, n) in enumerate(zip(items, lengths)):
        x = torch.as_tensor(np.asarray(it["input_values"], dtype=np.float32))
        if normalize:  # what Wav2Vec2FeatureExtractor(do_normalize=True) does, statistics over real samples only
            x = (x - x.mean()) / torch.sqrt(x.var(unbiased=False) + 1e-7)
        values[row, :n] = x
        mask[row, :n] = 1
    out = {"input_values": values}
    if attention_mask:
        out["attention_mask"] = mask
    return out, torch.tensor(lengths)


@contextlib.contextmanager
def _numpy_seed(seed_words: list[int]):
    """Temporarily replace NumPy's global RNG state (transformers' mask helpers draw from it)."""
    saved = np.random.get_state()
    np.random.seed(np.random.SeedSequence(seed_words).generate_state(4))
    try:
        yield
    finally:
        np.random.set_state(saved)


class PretrainCollator:
    """Batches for Wav2Vec2ForPreTraining: ``input_values``, ``attention_mask`` (layer-norm feature encoders,
    e.g. XLSR; group-norm models are fed zero padding without a mask, as HF recommends), ``mask_time_indices``,
    ``sampled_negative_indices`` and ``langs``. The model returns contrastive + diversity loss from these."""

    def __init__(
        self,
        config,
        mask_time_prob: float = 0.65,
        mask_time_length: int = 10,
        num_negatives: int | None = 100,
        seed: int = 0,
        *,
        min_masks: int = 2,
        normalize: bool = True,
        return_attention_mask: bool | None = None,
    ):
        if not 0 < mask_time_prob <= 1:
            raise ConfigError(f"mask_time_prob must be in (0, 1], got {mask_time_prob}")
        if mask_time_length < 1:
            raise ConfigError(f"mask_time_length must be >= 1, got {mask_time_length}")
        self.config = config
        self.mask_time_prob, self.mask_time_length = mask_time_prob, int(mask_time_length)
        # The model reads the number of negatives from the tensor's shape; None takes the config's value.
        self.num_negatives = int(num_negatives if num_negatives is not None else config.num_negatives)
        if self.num_negatives < 1:
            raise ConfigError(f"num_negatives must be >= 1, got {self.num_negatives}")
        self.seed, self.min_masks, self.normalize = int(seed), int(min_masks), normalize
        self.return_attention_mask = (config.feat_extract_norm == "layer" if return_attention_mask is None
                                      else return_attention_mask)

    def __call__(self, items: Sequence[dict | None]) -> dict | None:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        items = _present(items)
        if not items:
            return None
        batch, lengths = pad_audio(items, normalize=self.normalize, attention_mask=self.return_attention_mask)
        frames = feature_lengths(self.config, lengths)
        n_frames = int(feature_lengths(self.config, [batch["input_values"].shape[1]])[0])
        short = [it["id"] for it, f in zip(items, frames.tolist()) if f < self.mask_time_length + 1]
        if short:
            raise DataError(f"item(s) {', '.join(map(str, short))}: too short for a {self.mask_time_length}-frame "
                            f"mask span (raise min_seconds)")
        sub_mask = (torch.arange(n_frames)[None, :] < frames[:, None]).long()
        ids = ",".join(str(it.get("id", "")) for it in items)
        with _numpy_seed([self.seed, zlib.crc32(ids.encode("utf-8"))]):
            mask = _compute_mask_indices((len(items), n_frames), self.mask_time_prob, self.mask_time_length,
                                         attention_mask=sub_mask, min_masks=self.min_masks)
            negatives = _sample_negative_indices((len(items), n_frames), self.num_negatives, mask_time_indices=mask)
        batch["mask_time_indices"] = torch.from_numpy(mask)
        batch["sampled_negative_indices"] = torch.from_numpy(negatives.astype(np.int64))
        batch["langs"] = [it["lang"] for it in items]
        return batch


class CTCCollator:
    """Batches for Wav2Vec2ForCTC: ``input_values``, ``attention_mask``, ``labels`` (padded with -100, which
    the CTC loss ignores) and ``langs``; ``return_ids=True`` adds ``ids`` and ``texts`` for evaluation.

    ``pad_id`` is the vocabulary's pad token, which is also the CTC blank: a target containing it is rejected,
    because CTC cannot emit a blank as a label."""

    def __init__(self, pad_id: int = 0, *, normalize: bool = True, return_attention_mask: bool = True,
                 return_ids: bool = False):
        self.pad_id, self.normalize = pad_id, normalize
        self.return_attention_mask, self.return_ids = return_attention_mask, return_ids

    def __call__(self, items: Sequence[dict | None]) -> dict | None:
        items = _present(items)
        if not items:
            return None
        missing = [it.get("id") for it in items if "labels" not in it]
        if missing:
            raise DataError(f"item(s) {', '.join(map(str, missing))} have no labels: give SpeechDataset a vocab")
        blank = [it.get("id") for it in items if self.pad_id in it["labels"]]
        if blank:
            raise DataError(f"item(s) {', '.join(map(str, blank))}: labels contain the pad/blank id {self.pad_id}")
        empty = [it.get("id") for it in items if len(it["labels"]) == 0]
        if empty:
            raise DataError(f"item(s) {', '.join(map(str, empty))}: empty labels (empty transcript)")
        batch, _ = pad_audio(items, normalize=self.normalize, attention_mask=self.return_attention_mask)
        longest = max(len(it["labels"]) for it in items)
        labels = torch.full((len(items), longest), -100, dtype=torch.long)
        for row, it in enumerate(items):
            labels[row, : len(it["labels"])] = torch.as_tensor(it["labels"], dtype=torch.long)
        batch["labels"] = labels
        batch["langs"] = [it["lang"] for it in items]
        if self.return_ids:
            batch["ids"] = [it.get("id") for it in items]
            batch["texts"] = [it.get("text") for it in items]
        return batch
