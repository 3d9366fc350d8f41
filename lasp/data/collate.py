"""The one collator module: dataset items -> the tensors every stage feeds the model.

Scoring, IMP, random masks, pre-training, fine-tuning and evaluation all pad and normalize audio here, so a
waveform becomes the same ``input_values`` whichever stage sees it. Normalization follows the checkpoint's
feature-extractor config (``do_normalize`` in ``preprocessor_config.json``, see
:func:`lasp.models.features.feature_normalization`);
the attention mask follows the model config (layer-norm feature encoders such as XLSR get one; group-norm
models are fed zero padding without a mask, as transformers recommends).

Collators drop the items the dataset skipped under ``on_bad="skip"`` (``{"skipped": BadRow}``, or ``None``) and
list them under ``"skipped"``; when nothing usable is left the batch is only ``{"skipped": [...]}``
(:func:`has_inputs` is False), so a loop skips it and still counts its rows. Every other batch carries
``"langs"`` (one code per example).

Pre-training masks follow wav2vec 2.0 (spans of ``mask_time_length`` frames started with ``mask_time_prob``,
negatives drawn among the masked frames of the same utterance; both from the recipe), computed with
transformers' own ``_compute_mask_indices`` and ``_sample_negative_indices``. Those draw from NumPy's global
generator, so each call runs them under a generator seeded from (collator seed, item ids): a batch gets the same
masks on every run, after a resume and in whichever DataLoader worker builds it, and the caller's global NumPy
state is left untouched.
"""
from __future__ import annotations

import contextlib
import logging
import zlib
from typing import Sequence

import numpy as np
import torch

from lasp.errors import ConfigError, DataError

log = logging.getLogger(__name__)

def wants_attention_mask(config) -> bool:
    return getattr(config, "feat_extract_norm", "layer") == "layer"


def feature_lengths(config, input_lengths: Sequence[int] | torch.Tensor, add_adapter: bool | None = None) -> torch.Tensor:
    """Frames after the convolutional feature encoder (Wav2Vec2Model._get_feat_extract_output_lengths)."""
    lengths = torch.as_tensor(input_lengths, dtype=torch.long)
    for kernel, stride in zip(config.conv_kernel, config.conv_stride):
        lengths = torch.div(lengths - kernel, stride, rounding_mode="floor") + 1
    if add_adapter if add_adapter is not None else getattr(config, "add_adapter", False):
        for _ in range(config.num_adapter_layers):
            lengths = torch.div(lengths - 1, config.adapter_stride, rounding_mode="floor") + 1
    return lengths.clamp(min=0)


def receptive_field(config) -> int:
    """Samples the feature encoder needs to produce one frame (shorter audio is zero-padded up to this)."""
    need = 1
    for kernel, stride in reversed(list(zip(config.conv_kernel, config.conv_stride))):
        need = (need - 1) * stride + kernel
    return need


def _present(items: Sequence[dict | None]) -> tuple[list[dict], list]:
    """(usable items, the skipped rows among them)."""
    skipped = [it["skipped"] for it in items if it is not None and "skipped" in it]
    return [it for it in items if it is not None and "skipped" not in it], skipped


def has_inputs(batch: dict | None) -> bool:
    """False for a batch every row of which was skipped (``{"skipped": [...]}``, or None)."""
    return batch is not None and any(key != "skipped" for key in batch)


def pad_audio(items: Sequence[dict], *, normalize: bool, attention_mask: bool,
              min_length: int = 0) -> tuple[dict, torch.Tensor]:
    """Right-pad ``input_values`` with zeros; optional per-utterance zero-mean/unit-variance normalization."""
    lengths = [len(it["input_values"]) for it in items]
    if min(lengths) == 0:
        raise DataError(f"item {items[lengths.index(0)].get('id')}: empty input_values")
    # NumPy, not torch: per-utterance work on small arrays gains nothing from torch's intra-op thread pool
    values = np.zeros((len(items), max(max(lengths), min_length)), dtype=np.float32)
    mask = np.zeros(values.shape, dtype=np.int64)
    for row, (it, n) in enumerate(zip(items, lengths)):
        x = np.asarray(it["input_values"], dtype=np.float32)
        if normalize:  # what Wav2Vec2FeatureExtractor(do_normalize=True) does, statistics over real samples only
            x = (x - x.mean()) / np.sqrt(x.var() + 1e-7)
        values[row, :n] = x
        mask[row, :n] = 1
    out = {"input_values": torch.from_numpy(values)}
    if attention_mask:
        out["attention_mask"] = torch.from_numpy(mask)
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
    """Batches for Wav2Vec2ForPreTraining: ``input_values``, ``attention_mask`` (layer-norm encoders),
    ``mask_time_indices``, ``sampled_negative_indices`` and ``langs``."""

    def __init__(self, config, *, mask_time_prob: float, mask_time_length: int, num_negatives: int,
                 normalize: bool, seed: int = 0, min_masks: int = 2):
        if not 0 < mask_time_prob <= 1:
            raise ConfigError(f"mask_time_prob must be in (0, 1], got {mask_time_prob}")
        if mask_time_length < 1:
            raise ConfigError(f"mask_time_length must be >= 1, got {mask_time_length}")
        if num_negatives < 1:
            raise ConfigError(f"num_negatives must be >= 1, got {num_negatives}")
        self.config = config
        self.mask_time_prob, self.mask_time_length = float(mask_time_prob), int(mask_time_length)
        self.num_negatives = int(num_negatives)  # the model reads the count from the tensor's shape
        self.seed, self.min_masks, self.normalize = int(seed), int(min_masks), bool(normalize)
        self.attention_mask = wants_attention_mask(config)

    def __call__(self, items: Sequence[dict | None]) -> dict:
        from transformers.models.wav2vec2.modeling_wav2vec2 import _compute_mask_indices, _sample_negative_indices

        items, skipped = _present(items)
        if not items:
            return {"skipped": skipped}
        batch, lengths = pad_audio(items, normalize=self.normalize, attention_mask=self.attention_mask)
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
        batch["skipped"] = skipped
        return batch


class CTCCollator:
    """Batches for Wav2Vec2ForCTC: ``input_values``, ``attention_mask`` (layer-norm encoders), ``labels`` (padded
    with -100, which the CTC loss ignores) and ``langs``.

    ``pad_id`` is the vocabulary's pad token, which is also the CTC blank: a target containing it is rejected,
    because CTC cannot emit a blank as a label."""

    def __init__(self, config, *, pad_id: int, normalize: bool):
        self.pad_id, self.normalize = int(pad_id), bool(normalize)
        self.attention_mask = wants_attention_mask(config)

    def __call__(self, items: Sequence[dict | None]) -> dict:
        items, skipped = _present(items)
        if not items:
            return {"skipped": skipped}
        missing = [it.get("id") for it in items if "labels" not in it]
        if missing:
            raise DataError(f"item(s) {', '.join(map(str, missing))} have no labels: give SpeechDataset a vocab")
        blank = [it.get("id") for it in items if self.pad_id in it["labels"]]
        if blank:
            raise DataError(f"item(s) {', '.join(map(str, blank))}: labels contain the pad/blank id {self.pad_id}")
        empty = [it.get("id") for it in items if len(it["labels"]) == 0]
        if empty:
            raise DataError(f"item(s) {', '.join(map(str, empty))}: empty labels (empty transcript)")
        batch, _ = pad_audio(items, normalize=self.normalize, attention_mask=self.attention_mask)
        longest = max(len(it["labels"]) for it in items)
        labels = torch.full((len(items), longest), -100, dtype=torch.long)
        for row, it in enumerate(items):
            labels[row, : len(it["labels"])] = torch.as_tensor(it["labels"], dtype=torch.long)
        batch["labels"] = labels
        batch["langs"] = [it["lang"] for it in items]
        batch["skipped"] = skipped
        return batch


class EvalCollator:
    """Batches for decoding: audio as every other stage pads it, plus ``ids``, ``texts`` and ``lengths``
    (samples), and ``unreadable`` (what :class:`lasp.data.dataset.Readable` reported for rows that could not
    be decoded). Audio shorter than the encoder's receptive field is zero-padded up to it."""

    def __init__(self, config, *, normalize: bool):
        self.normalize = bool(normalize)
        self.attention_mask = wants_attention_mask(config)
        self.min_length = receptive_field(config)

    def __call__(self, items: Sequence[dict]) -> dict:
        bad = [it["unreadable"] for it in items if "unreadable" in it]
        good = [it for it in items if "unreadable" not in it]
        batch: dict = {"unreadable": bad, "ids": [str(it["id"]) for it in good],
                       "texts": [it["text"] for it in good], "langs": [it["lang"] for it in good]}
        if good:
            inputs, lengths = pad_audio(good, normalize=self.normalize, attention_mask=self.attention_mask,
                                        min_length=self.min_length)
            batch.update(inputs, lengths=lengths)
        return batch
