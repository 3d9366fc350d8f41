"""One elementwise Triton kernel for the masked cast on GPUs: ``out = cast(x) ⊙ M`` reading the packed bits.

The forward uses it for ``bf16(W) ⊙ M`` (fp32 master weight in, bf16 copy out) and the backward for
``fp32(dW) ⊙ M`` (bf16 GEMM output in, fp32 gradient out): each is the cast a dense mixed-precision step does
anyway, with the mask bits read on the way (1/16 of a bf16 weight's bytes). Without it the same result takes
an unpack, a compare and a ``where`` (three extra passes).

Used only on CUDA devices of compute capability 8.0 or newer with Triton installed (:func:`usable`); the
tests run the kernel on CPU tensors under ``TRITON_INTERPRET=1``.
"""
from __future__ import annotations

import functools

import torch

BLOCK = 1024


@functools.lru_cache(maxsize=None)
def _kernel():
    import triton
    import triton.language as tl

    @triton.jit
    def masked_convert(x_ptr, bits_ptr, out_ptr, cols, n_bytes, BLOCK: tl.constexpr):
        row = tl.program_id(0).to(tl.int64)
        offs = tl.program_id(1) * BLOCK + tl.arange(0, BLOCK)
        inside = offs < cols
        x = tl.load(x_ptr + row * cols + offs, mask=inside, other=0.0)
        byte = tl.load(bits_ptr + row * n_bytes + offs // 8, mask=inside, other=0).to(tl.int32)
        keep = ((byte >> (offs % 8)) & 1) != 0
        out = tl.where(keep, x, 0.0).to(out_ptr.dtype.element_ty)
        tl.store(out_ptr + row * cols + offs, out, mask=inside)

    return masked_convert


def available() -> bool:
    try:
        import triton  # noqa: F401
    except ImportError:
        return False
    return True


def usable(*tensors: torch.Tensor) -> bool:
    """CUDA tensors on a GPU of capability >= 8.0 (never a Triton path on older GPUs or on CPU), Triton present."""
    device = tensors[0].device
    if device.type != "cuda" or not all(t.is_contiguous() and t.device == device for t in tensors):
        return False
    return torch.cuda.get_device_capability(device) >= (8, 0) and available()


def masked_convert(x: torch.Tensor, bits: torch.Tensor, out: torch.Tensor) -> torch.Tensor:
    """``out = out.dtype(x) ⊙ M`` for a 2-D ``x`` and its packed mask ``bits`` (``[rows, ceil(cols/8)]``)."""
    import triton

    rows, cols = x.shape
    _kernel()[(rows, triton.cdiv(cols, BLOCK))](x, bits, out, cols, bits.shape[-1], BLOCK=BLOCK)
    # a write through a raw pointer is invisible to autograd's version counter: bump it, so a graph that saved
    # ``out`` (a cached masked copy being rewritten for another language) refuses stale values in backward
    torch.autograd.graph.increment_version(out)
    return out
