"""Masked linear operators: ``y = x (W ⊙ M_lang)ᵀ + b`` with bit-packed masks.

:func:`lasp.masked.kernels.linear.masked_linear` is the functional entry point (the masked model's layers call the
same pieces with a cached masked copy). ``bits`` holds every loaded language's mask for one weight as
``uint8[L, out, ceil(in/8)]`` (see :mod:`lasp.masks.bits`): N languages cost N × params / 8 bytes. Either ``lang``
(one language for the whole batch) or ``row_lang`` (a language index per example along dim 0 of ``x``).

Modes:

- ``cast``: the mask is folded into the weight cast (:mod:`lasp.masked.kernels.cast`); every GEMM is a plain
  ``F.linear``/cuBLAS call on ``cast(W) ⊙ M``, and mixed batches run one GEMM per language segment.
- ``reference``: unpack + multiply + ``F.linear`` on every call, autograd for the rest (the check).
- ``auto``: ``cast`` on every device.

The masked copy is built by small C loops on CPU (:mod:`lasp.masked.kernels.native`) and by one elementwise
Triton kernel on CUDA (:mod:`lasp.masked.kernels.triton_cast`). There is no Triton GEMM: a masked copy per
language present costs one weight-sized buffer per language (XLSR-53 targets in bf16: 0.6 GB each, 4.8 GB for 8
languages — it fits every GPU that trains XLSR), and with the copy every GEMM runs at cuBLAS speed, which a
kernel that masks tiles in registers does not reach (it serializes the tensor cores on the mask load).
"""
