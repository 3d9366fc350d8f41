"""Masked linear operators: ``y = x (W ⊙ M_lang)ᵀ + b`` with bit-packed masks.

``masked_linear`` is the one entry point the masked model calls. ``bits`` holds
every loaded language's mask for this weight as ``uint8[L, out, ceil(in/8)]``
(see :mod:`lasp.bits`), resident on the weight's device: N languages cost
N × params / 8 bytes. Either ``lang`` (one language for the whole batch) or
``row_lang`` (a language index per example along dim 0 of ``x``) is given.

Modes: ``reference`` (unpack + multiply + ``F.linear``), ``fused`` (Triton
kernels that read the bits in registers, :mod:`lasp.kernels.triton_masked`),
``auto`` (fused on CUDA when Triton is available, reference elsewhere). The
fused path also runs on CPU tensors under ``TRITON_INTERPRET=1`` (tests only).
"""
from __future__ import annotations

import torch

from lasp.kernels.autograd import fused_masked_linear, fused_supported, triton_available
from lasp.kernels.reference import masked_linear_reference

MODES = ("reference", "fused", "auto")

__all__ = ["MODES", "masked_linear", "resolve_mode", "fused_masked_linear", "fused_supported",
           "triton_available", "masked_linear_reference"]


def resolve_mode(mode: str, device: torch.device) -> str:
    """The implementation ``mode`` selects on ``device``: "auto" is fused on CUDA with Triton, else reference."""
    if mode not in MODES:
        raise ValueError(f"unknown masked-linear mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "auto":
        return "fused" if device.type == "cuda" and fused_supported(device) else "reference"
    return mode


def masked_linear(
    x: torch.Tensor,
    weight: torch.Tensor,
    bias: torch.Tensor | None,
    bits: torch.Tensor,
    *,
    lang: int | None = None,
    row_lang: torch.Tensor | None = None,
    mode: str = "auto",
    mask_cache: dict[int, torch.Tensor] | None = None,
) -> torch.Tensor:
    if resolve_mode(mode, x.device) == "fused":
        # The fused kernels read the bits directly; an unpacked mask cache is not needed.
        return fused_masked_linear(x, weight, bias, bits, lang=lang, row_lang=row_lang)
    return masked_linear_reference(x, weight, bias, bits, lang=lang, row_lang=row_lang, mask_cache=mask_cache)
