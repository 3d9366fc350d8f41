"""The functional masked linear and the choice of implementation (mode) per device."""
from __future__ import annotations

import torch

from lasp.masked.kernels.cast import compute_dtype, linear_grouped, linear_single, masked_weight, segments_of
from lasp.masked.kernels.reference import masked_linear_reference

MODES = ("cast", "reference", "auto")


def resolve_mode(mode: str, device: torch.device | str) -> str:
    """The implementation ``mode`` selects on ``device`` (``auto``: the masked cast everywhere)."""
    if mode not in MODES:
        raise ValueError(f"unknown masked-linear mode {mode!r}; choose one of {', '.join(MODES)}")
    return "cast" if mode == "auto" else mode


def _check(x, weight, bias, bits, lang, row_lang) -> None:
    if (lang is None) == (row_lang is None):
        raise ValueError("masked_linear needs exactly one of lang= or row_lang=")
    out_f, in_f = weight.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"input has {x.shape[-1]} features but the weight expects {in_f}")
    expected = (out_f, (in_f + 7) // 8)
    if bits.dtype != torch.uint8 or bits.dim() != 3 or tuple(bits.shape[1:]) != expected:
        raise ValueError(f"bits must be uint8 [L, {expected[0]}, {expected[1]}] for weight {tuple(weight.shape)}, "
                         f"got {bits.dtype} {tuple(bits.shape)}")
    if lang is not None and not 0 <= lang < bits.shape[0]:
        raise ValueError(f"language index {lang} out of range for {bits.shape[0]} loaded languages")
    if row_lang is not None and (row_lang.dim() != 1 or row_lang.shape[0] != x.shape[0]):
        raise ValueError(f"row_lang has shape {tuple(row_lang.shape)} but the batch has {x.shape[0]} rows")


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits: torch.Tensor,
    *,
    lang: int | None = None,
    row_lang: torch.Tensor | list[int] | None = None,
    mode: str = "auto",
    mask_cache: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``x (W ⊙ M)ᵀ + b`` for language ``lang`` or per example (``row_lang``); gradients ``dW = M ⊙ dYᵀX``.

    The functional form builds its masked copies on every call; ``MaskedModel`` caches them per step.
    """
    mode = resolve_mode(mode, x.device)
    if isinstance(row_lang, (list, tuple)):
        row_lang = torch.tensor(row_lang, dtype=torch.long)
    _check(x, weight, bias, bits, lang, row_lang)
    if mode == "reference":
        return masked_linear_reference(x, weight, bias, bits, lang=lang, row_lang=row_lang, mask_cache=mask_cache)
    dtype = compute_dtype(x, weight)
    if lang is not None:
        return linear_single(x, weight, bias, masked_weight(weight, bits[lang], dtype), bits[lang])
    seg = segments_of(row_lang.tolist())  # the host list: a functional call has no set_language to do it once
    langs = [l for _, _, l in seg.spans]
    order = inverse = None
    if seg.order is not None:
        order = torch.tensor(seg.order, dtype=torch.long, device=x.device)
        inverse = torch.empty_like(order)
        inverse[order] = torch.arange(len(seg.order), device=x.device)
    return linear_grouped(x, weight, bias, seg, order, inverse, [masked_weight(weight, bits[l], dtype) for l in langs],
                          [bits[l] for l in langs])
