"""Autograd wrapper over the fused Triton kernels (forward, dX, dW) for single- and mixed-language batches.

Only tensors that exist anyway are saved for backward (``x``, ``W`` and the bits):
the masked weight is recomputed tile by tile in registers by both backward kernels.
Autocast is honoured the way ``F.linear`` honours it: operands are cast to the
autocast dtype before the kernels run, and the cast's own backward returns ``dW``
in the parameter's dtype.
"""
from __future__ import annotations

import os

import torch

from lasp.errors import ConfigError


def _interpreting() -> bool:
    return os.environ.get("TRITON_INTERPRET", "0") not in ("", "0")


def triton_available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def fused_supported(device: torch.device) -> bool:
    """The fused kernels run on CUDA tensors, and on CPU tensors only under ``TRITON_INTERPRET=1``."""
    if not triton_available():
        return False
    return device.type == "cuda" or (device.type == "cpu" and _interpreting())


def _kernels():
    # Imported lazily: importing Triton is slow, and the interpreter switch is read when the kernels are defined.
    from lasp.kernels import triton_masked

    return triton_masked


class _FusedMaskedLinear(torch.autograd.Function):
    @staticmethod
    def forward(ctx, x2d, weight, bias, bits, lang, plan):
        k = _kernels()
        y = k.forward(x2d, weight, bias, bits, lang, plan)
        ctx.save_for_backward(x2d, weight, bits)
        ctx.lang = lang
        ctx.plan = plan
        ctx.has_bias = bias is not None
        return y

    @staticmethod
    def backward(ctx, dy):
        k = _kernels()
        x2d, weight, bits = ctx.saved_tensors
        dy = dy.contiguous()
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = k.grad_input(dy, weight, bits, ctx.lang, ctx.plan)
        if ctx.needs_input_grad[1]:
            dw = k.grad_weight(dy, x2d, bits, ctx.lang, ctx.plan, weight.dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy.sum(0, dtype=torch.float32).to(dy.dtype)
        return dx, dw, db, None, None, None


# One cached plan: every masked Linear of a step sees the same ``row_lang`` tensor, so the
# grouping (sort, counts, tiles) is computed once per batch. Holding the tensor itself keeps its
# id from being reused; ``_version`` catches in-place edits.
_PLAN_CACHE: dict[str, object] = {}


def _plan_for(row_lang: torch.Tensor, rows_per_example: int, num_langs: int, dtype: torch.dtype,
              device: torch.device):
    k = _kernels()
    block_m = k.blocks_for(dtype).bm
    key = (rows_per_example, num_langs, block_m, row_lang._version, device)
    if _PLAN_CACHE.get("row_lang") is row_lang and _PLAN_CACHE.get("key") == key:
        return _PLAN_CACHE["plan"]
    plan = k.build_plan(row_lang.to(device), rows_per_example, num_langs, block_m)
    _PLAN_CACHE.update(row_lang=row_lang, key=key, plan=plan)
    return plan


def _check(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor,
           lang: int | None, row_lang: torch.Tensor | None) -> None:
    if (lang is None) == (row_lang is None):
        raise ValueError("masked_linear needs exactly one of lang= or row_lang=")
    out_f, in_f = weight.shape
    if x.shape[-1] != in_f:
        raise ValueError(f"input has {x.shape[-1]} features but the weight expects {in_f}")
    expected = (out_f, (in_f + 7) // 8)
    if bits.dtype != torch.uint8 or bits.dim() != 3 or tuple(bits.shape[1:]) != expected:
        raise ValueError(f"bits must be uint8 [L, {expected[0]}, {expected[1]}] for weight {tuple(weight.shape)}, "
                         f"got {bits.dtype} {tuple(bits.shape)}")
    if bits.device != weight.device or x.device != weight.device:
        raise ValueError(f"x ({x.device}), weight ({weight.device}) and bits ({bits.device}) must share a device")
    if lang is not None and not 0 <= lang < bits.shape[0]:
        raise ValueError(f"language index {lang} out of range for {bits.shape[0]} loaded languages")
    if row_lang is not None and (row_lang.dim() != 1 or row_lang.shape[0] != x.shape[0]):
        raise ValueError(f"row_lang has shape {tuple(row_lang.shape)} but the batch has {x.shape[0]} rows")
    if bias is not None and bias.shape != (out_f,):
        raise ValueError(f"bias has shape {tuple(bias.shape)}, expected ({out_f},)")


def fused_masked_linear(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None, bits: torch.Tensor, *,
                        lang: int | None = None, row_lang: torch.Tensor | None = None) -> torch.Tensor:
    """``y = x (W ⊙ M)ᵀ + b`` through the fused kernels; same arguments and result as the reference."""
    if not fused_supported(x.device):
        raise ConfigError(f"masked-linear mode 'fused' needs Triton and a CUDA device (tensor is on {x.device}); "
                          "use mode='auto' or 'reference'")
    _check(x, weight, bias, bits, lang, row_lang)
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type):
        dtype = torch.get_autocast_dtype(device_type)
        x, weight = x.to(dtype), weight.to(dtype)
        bias = bias.to(dtype) if bias is not None else None
    if x.dtype != weight.dtype:
        raise ValueError(f"input dtype {x.dtype} differs from weight dtype {weight.dtype} (enable autocast or cast)")
    bits = bits.contiguous()
    lead = x.shape[:-1]
    x2d = x.reshape(-1, x.shape[-1])
    plan = None
    if row_lang is not None:
        if x.dim() < 2:
            raise ValueError("row_lang needs x with a batch dimension ([B, ..., in])")
        rows_per_example = x2d.shape[0] // max(x.shape[0], 1)
        plan = _plan_for(row_lang, rows_per_example, bits.shape[0], x.dtype, x.device)
    with torch.autocast(device_type, enabled=False):
        y = _FusedMaskedLinear.apply(x2d, weight, bias, bits, int(lang or 0), plan)
    return y.reshape(*lead, weight.shape[0])
