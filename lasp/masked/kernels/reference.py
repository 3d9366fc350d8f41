"""Reference masked linear: unpack the language's bits, multiply, ``F.linear``.

Correct on every device and dtype and differentiable by autograd (so ``dW`` is
``M ⊙ (dYᵀ X)`` without extra work), but it materializes ``W ⊙ M`` in memory on
every call. The masked cast (:mod:`lasp.masked.kernels.cast`) is checked against it.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from lasp.masks.bits import unpack_bits


def dense_mask(bits: torch.Tensor, lang: int, shape: torch.Size) -> torch.Tensor:
    """Bool mask of language index ``lang`` from the stacked packed masks ``bits[L, out, in/8]``."""
    return unpack_bits(bits[lang], shape)


def masked_linear_reference(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits: torch.Tensor,
    lang: int | None = None,
    row_lang: torch.Tensor | None = None,
    mask_cache: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    """``y = x (W ⊙ M_l)ᵀ + b`` for one language ``lang`` or per example (``row_lang[i]`` for ``x[i]``).

    ``mask_cache`` (language index → bool mask) keeps the unpacked masks between
    calls instead of unpacking every step; it is filled here and the caller
    decides which languages stay in it (the masked model keeps the active ones).
    """
    def mask_of(index: int) -> torch.Tensor:
        if mask_cache is None:
            return dense_mask(bits, index, weight.shape)
        if index not in mask_cache:
            mask_cache[index] = dense_mask(bits, index, weight.shape)
        return mask_cache[index]

    if (lang is None) == (row_lang is None):
        raise ValueError("masked_linear needs exactly one of lang= or row_lang=")
    if lang is not None:
        return F.linear(x, weight * mask_of(lang).to(weight.dtype), bias)
    if row_lang.shape[0] != x.shape[0]:
        raise ValueError(f"row_lang has {row_lang.shape[0]} entries but the batch has {x.shape[0]} rows")
    out = None
    for index in torch.unique(row_lang).tolist():
        rows = (row_lang == index).nonzero(as_tuple=True)[0]
        part = F.linear(x.index_select(0, rows), weight * mask_of(index).to(weight.dtype), bias)
        if out is None:
            out = part.new_empty((*x.shape[:-1], weight.shape[0]))
        out = out.index_copy(0, rows, part)
    return out
