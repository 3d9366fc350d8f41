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


def codevector_perplexity(probs: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """wav2vec 2.0's codevector perplexity, summed over groups: exp(−Σ p̄ log(p̄ + 1e-7)) of the mean softmax p̄
    over the masked frames (fairseq's formula, and transformers' before version 5).

    transformers 5 writes p̄ log p̄ as ``xlogy(p̄, p̄)``, whose gradient at p̄ = 0 is 0/0: a single codevector that
    no masked frame can choose (its softmax underflows to 0 in float32: common with random weights, and with a
    collapsed codebook) makes the whole step's gradient NaN, and the step is lost. The 1e-7 keeps it finite."""
    if mask is not None:
        chosen = mask.flatten()[:, None, None].expand(probs.shape)
        marginal = torch.where(chosen, probs, torch.zeros_like(probs)).sum(dim=0) / mask.sum()
    else:
        marginal = probs.mean(dim=0)
    return torch.exp(-torch.sum(marginal * torch.log(marginal + 1e-7), dim=-1)).sum()


def use_finite_perplexity(model: torch.nn.Module) -> torch.nn.Module:
    """Every Gumbel quantizer of ``model`` computes its perplexity with :func:`codevector_perplexity` (an
    instance attribute: the class and other models are untouched); returns ``model``."""
    for module in model.modules():
        if type(module).__name__.endswith("GumbelVectorQuantizer") and hasattr(module, "_compute_perplexity"):
            module._compute_perplexity = codevector_perplexity
    return model
