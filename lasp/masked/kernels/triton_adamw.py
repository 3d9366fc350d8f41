"""The confined AdamW update as one elementwise Triton kernel on GPUs: one pass over p, g, m, v and the packed bits.

torch's fused AdamW reads the weight, its gradient and both moments once and writes three of them back. This
kernel does the same and reads the step's packed union (1/32 of an fp32 weight's bytes); an entry outside the
union is not written at all, so its weight and moments keep their exact bits. No temporaries: the multi-tensor
torch path needs several weight-sized buffers per tensor and about ten passes.

The arithmetic is the one of the CPU loops (:mod:`lasp.masked.kernels.native`): torch's AdamW formula in fp32.
Used for contiguous fp32 CUDA tensors where the masked cast's Triton kernel is usable
(:func:`lasp.masked.kernels.triton_cast.usable`); the tests run it on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import functools

import torch

from lasp.masked.kernels import triton_cast


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def masked_adamw(p_ptr, g_ptr, m_ptr, v_ptr, bits_ptr, cols, n_bytes, decay, one_minus_beta1, beta2,
                     one_minus_beta2, step_size, inv_bc2_sqrt, eps, sign, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < cols
        byte = tl.load(bits_ptr + row * n_bytes + offs // 8, mask=inside, other=0).to(tl.int32)
        keep = inside & (((byte >> (offs % 8)) & 1) != 0)
        at = row * cols + offs
        g = tl.load(g_ptr + at, mask=keep, other=0.0) * sign
        m = tl.load(m_ptr + at, mask=keep, other=0.0)
        v = tl.load(v_ptr + at, mask=keep, other=0.0)
        p = tl.load(p_ptr + at, mask=keep, other=0.0)
        m = m + one_minus_beta1 * (g - m)
        v = beta2 * v + one_minus_beta2 * g * g
        p = p * decay - step_size * (m / (tl.sqrt(v) * inv_bc2_sqrt + eps))
        tl.store(m_ptr + at, m, mask=keep)
        tl.store(v_ptr + at, v, mask=keep)
        tl.store(p_ptr + at, p, mask=keep)

    return masked_adamw


def usable(*tensors: torch.Tensor) -> bool:
    """Contiguous fp32 weights, gradients and moments (and uint8 bits) where the Triton cast is usable."""
    return all(t.dtype in (torch.float32, torch.uint8) for t in tensors) and triton_cast.usable(*tensors)


def masked_adamw_(param: torch.Tensor, grad: torch.Tensor, exp_avg: torch.Tensor, exp_avg_sq: torch.Tensor,
                  bits: torch.Tensor, *, lr: float, beta1: float, beta2: float, eps: float, weight_decay: float,
                  bias_correction1: float, bias_correction2_sqrt: float, maximize: bool) -> None:
    """AdamW on the entries of ``param`` whose bit is set in ``bits`` (packed along the last dimension)."""
    import triton

    cols = param.shape[-1] if param.dim() else 1
    rows = param.numel() // max(cols, 1)
    _kernel()[(rows, triton.cdiv(cols, triton_cast.BLOCK))](
        param, grad, exp_avg, exp_avg_sq, bits, cols, (cols + 7) // 8, 1.0 - lr * weight_decay, 1.0 - beta1, beta2,
        1.0 - beta2, lr / bias_correction1, 1.0 / bias_correction2_sqrt, eps, -1.0 if maximize else 1.0,
        BLOCK=triton_cast.BLOCK)
    for t in (param, exp_avg, exp_avg_sq):  # written through raw pointers: tell autograd's version counters
        torch.autograd.graph.increment_version(t)
