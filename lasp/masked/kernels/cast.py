"""The masked cast: ``y = x · cast(W ⊙ M)ᵀ + b`` with a plain GEMM, ``dW = M ⊙ (dYᵀ X)``.

A dense mixed-precision step already casts every fp32 weight to bf16 once per forward and its gradient back
to fp32. Folding the mask into that cast (``bf16(W) ⊙ M``, one pass that reads the bits) leaves every GEMM a
plain ``F.linear`` / cuBLAS call; without autocast the copy is fp32 (one extra pass per step). The gradient of
the weight is masked in place where the GEMM wrote it. Nothing here writes ``W ⊙ M`` into ``W``.

Mixed-language batches: rows are grouped by language into contiguous *segments* (a permutation only when the
batch is not already grouped), each segment runs one GEMM against its language's masked copy, and each
segment's dW is masked by its own language before the segments are summed. Segment boundaries come from the
host-side language list, so the device never synchronizes with the host.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from lasp.masks.bits import unpack_bits
from lasp.masked.kernels import native, triton_cast


def masked_weight(weight: torch.Tensor, bits: torch.Tensor, dtype: torch.dtype,
                  out: torch.Tensor | None = None) -> torch.Tensor:
    """``cast(W) ⊙ M`` as a new (or the given ``out``) tensor of ``dtype``; ``bits`` is one language's packed mask."""
    w = weight.detach()
    if out is None or out.dtype != dtype or out.shape != w.shape or out.device != w.device:
        out = torch.empty(w.shape, dtype=dtype, device=w.device)
    if dtype == torch.float32 and w.dtype == torch.float32 and native.usable(w, bits, out):
        return native.masked_copy(w, bits, out)
    if w.dim() == 2 and triton_cast.usable(w, bits, out):
        return triton_cast.masked_convert(w, bits, out)
    keep = unpack_bits(bits, w.shape)
    torch.where(keep, w.to(dtype), torch.zeros((), dtype=dtype, device=w.device), out=out)
    return out


def mask_grad_(grad: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """``grad ⊙ M`` in place."""
    if native.usable(grad, bits):
        return native.mask_(grad, bits)
    return grad.mul_(unpack_bits(bits, grad.shape))


def _weight_grad(dy2d: torch.Tensor, x2d: torch.Tensor, bits: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    dw = dy2d.t().mm(x2d)
    if dw.dtype != dtype and triton_cast.usable(dw, bits):
        # the cast back to the parameter's dtype and the mask in one pass
        return triton_cast.masked_convert(dw, bits, torch.empty(dw.shape, dtype=dtype, device=dw.device))
    if dw.dtype != dtype:
        dw = dw.to(dtype)  # the cast back to the parameter's dtype (bf16 -> fp32 under autocast)
    return mask_grad_(dw, bits)


class MaskedLinearFunction(torch.autograd.Function):
    """One language: forward and dX use the prepared masked copy; dW is masked in place after its GEMM."""

    @staticmethod
    def forward(ctx, x, weight, bias, wm, bits):
        ctx.save_for_backward(x, wm, bits)
        ctx.weight_dtype = weight.dtype
        ctx.has_bias = bias is not None
        return F.linear(x, wm, bias)

    @staticmethod
    def backward(ctx, dy):
        x, wm, bits = ctx.saved_tensors
        dx = dw = db = None
        dy2d = dy.reshape(-1, dy.shape[-1])
        if ctx.needs_input_grad[0]:
            dx = dy2d.mm(wm).reshape(*dy.shape[:-1], wm.shape[1])  # one 2-D GEMM (matmul may pick bmm)
        if ctx.needs_input_grad[1]:
            dw = _weight_grad(dy2d, x.reshape(-1, x.shape[-1]), bits, ctx.weight_dtype)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2d.sum(0)
        return dx, dw, db, None, None


@dataclass(frozen=True)
class Segments:
    """Rows of a mixed batch grouped by language: ``spans[i] = (start, end, lang)`` in examples (dim 0).

    ``order`` is None when the batch is already grouped (every language's examples are contiguous); otherwise
    it lists the examples in grouped order and the spans refer to that order.
    """

    spans: tuple[tuple[int, int, int], ...]
    order: tuple[int, ...] | None
    rows: int

    @property
    def languages(self) -> tuple[int, ...]:
        return tuple(dict.fromkeys(lang for _, _, lang in self.spans))


def segments_of(row_lang: list[int]) -> Segments:
    """Group a per-example language list into contiguous spans (stable: examples keep their relative order)."""
    runs: list[list[int]] = []
    for i, lang in enumerate(row_lang):
        if runs and runs[-1][2] == lang:
            runs[-1][1] = i + 1
        else:
            runs.append([i, i + 1, lang])
    langs = [r[2] for r in runs]
    if len(set(langs)) == len(langs):
        return Segments(tuple(tuple(r) for r in runs), None, len(row_lang))
    order: list[int] = []
    spans = []
    for lang in dict.fromkeys(row_lang):
        start = len(order)
        order.extend(i for i, l in enumerate(row_lang) if l == lang)
        spans.append((start, len(order), lang))
    return Segments(tuple(spans), tuple(order), len(row_lang))


class GroupedMaskedLinearFunction(torch.autograd.Function):
    """Mixed languages on a grouped batch: one GEMM per segment (forward and dX), dW masked per segment and summed.

    ``x`` is ``[rows, ..., in]`` already in grouped order; ``spans`` are in units of dim 0; ``copies`` holds
    each span's masked weight and ``bits`` its packed mask, in span order.
    """

    @staticmethod
    def forward(ctx, x, weight, bias, spans, copies, bits):
        per_row = x[0].numel() // x.shape[-1] if x.shape[0] else 1
        x2d = x.reshape(-1, x.shape[-1])
        out = x2d.new_empty((x2d.shape[0], copies[0].shape[0]))
        for (start, end, _), wm in zip(spans, copies):
            a, b = start * per_row, end * per_row
            if bias is not None:
                torch.addmm(bias, x2d[a:b], wm.t(), out=out[a:b])
            else:
                torch.mm(x2d[a:b], wm.t(), out=out[a:b])
        ctx.save_for_backward(x2d, *copies, *bits)
        ctx.spans, ctx.per_row, ctx.n = spans, per_row, len(copies)
        ctx.weight_dtype, ctx.has_bias, ctx.x_shape = weight.dtype, bias is not None, x.shape
        return out.reshape(*x.shape[:-1], out.shape[-1])

    @staticmethod
    def backward(ctx, dy):
        saved = ctx.saved_tensors
        x2d, copies, bits = saved[0], saved[1:1 + ctx.n], saved[1 + ctx.n:]
        dy2d = dy.reshape(-1, dy.shape[-1])
        dx = dw = db = None
        if ctx.needs_input_grad[0]:
            dx = x2d.new_empty(x2d.shape)
        for (start, end, _), wm, b in zip(ctx.spans, copies, bits):
            rs = slice(start * ctx.per_row, end * ctx.per_row)
            if dx is not None:
                torch.mm(dy2d[rs], wm, out=dx[rs])
            if ctx.needs_input_grad[1]:
                part = _weight_grad(dy2d[rs], x2d[rs], b, ctx.weight_dtype)
                dw = part if dw is None else dw.add_(part)
        if ctx.has_bias and ctx.needs_input_grad[2]:
            db = dy2d.sum(0)
        if dx is not None:
            dx = dx.reshape(ctx.x_shape)
        return dx, dw, db, None, None, None


def compute_dtype(x: torch.Tensor, weight: torch.Tensor) -> torch.dtype:
    """The dtype ``F.linear`` would compute in here: autocast's dtype when autocast is on, else the weight's."""
    device_type = x.device.type
    if torch.is_autocast_enabled(device_type) and weight.dtype in (torch.float32, torch.float16, torch.bfloat16):
        return torch.get_autocast_dtype(device_type)
    return weight.dtype


def linear_single(x, weight, bias, wm, bits):
    """``F.linear(x, wm, bias)`` with ``dW = M ⊙ dYᵀX``; ``wm`` is ``masked_weight(weight, bits, dtype)``."""
    dtype = wm.dtype
    with torch.autocast(x.device.type, enabled=False):
        return MaskedLinearFunction.apply(x.to(dtype), weight, None if bias is None else bias.to(dtype), wm, bits)


def linear_grouped(x, weight, bias, segments: Segments, order: torch.Tensor | None, inverse: torch.Tensor | None,
                   copies: list[torch.Tensor], bits: list[torch.Tensor]):
    """Mixed-language linear over ``segments``; ``order``/``inverse`` (device index tensors) only when regrouping."""
    if x.dim() < 2 or x.shape[0] != segments.rows:
        raise ValueError(f"the batch has {x.shape[0] if x.dim() else 0} rows but {segments.rows} languages were set")
    dtype = copies[0].dtype
    with torch.autocast(x.device.type, enabled=False):
        xs = x.to(dtype)
        if order is not None:
            xs = xs.index_select(0, order)
        y = GroupedMaskedLinearFunction.apply(xs, weight, None if bias is None else bias.to(dtype),
                                              segments.spans, tuple(copies), tuple(bits))
        if inverse is not None:
            y = y.index_select(0, inverse)
    return y
