"""Batch -> loss: the one place that runs a model on a collated batch and reads its training objective.

Scoring, IMP and both training stages call :func:`batch_loss`. Wav2Vec2ForPreTraining returns contrastive +
diversity loss *summed* over the masked frames; its normaliser is the number of masked frames (wav2vec 2.0
divides the summed gradient by it, over all ranks), a tensor on the batch's device so that nothing waits for the
device to count it. Wav2Vec2ForCTC returns the CTC loss (a per-utterance mean under ``ctc_loss_reduction="mean"``);
its normaliser is 1.
"""
from __future__ import annotations

from typing import Any, Mapping

import torch

from lasp.errors import ConfigError

NOT_INPUTS = ("langs", "lang", "ids", "texts", "lengths", "unreadable", "skipped")


def model_inputs(batch: Mapping[str, Any], device: torch.device | None = None) -> dict:
    """The model's keyword arguments from a collated batch (bookkeeping keys dropped, tensors on ``device``)."""
    return {k: (v.to(device) if device is not None and torch.is_tensor(v) else v)
            for k, v in batch.items() if k not in NOT_INPUTS}


def batch_loss(model, batch: Mapping[str, Any], device: torch.device | None = None):
    """``(model output, summed loss, normaliser)``; ``loss / normaliser`` is the per-frame / per-utterance mean."""
    inputs = model_inputs(batch, device)
    out = model(**inputs)
    loss = getattr(out, "loss", None)
    if loss is None:
        raise ConfigError(f"{type(getattr(model, 'model', model)).__name__} returned no loss: pre-training batches "
                          "need mask_time_indices and sampled_negative_indices, CTC batches need labels")
    if "mask_time_indices" in inputs:
        return out, loss, inputs["mask_time_indices"].sum(dtype=torch.float32)
    return out, loss, 1.0


def mean_loss(loss: torch.Tensor, normaliser) -> torch.Tensor:
    """``loss / normaliser`` (at least 1): the per-frame / per-utterance mean, without a host read."""
    if torch.is_tensor(normaliser):
        return loss / normaliser.clamp(min=1.0)
    return loss / max(float(normaliser), 1.0)
